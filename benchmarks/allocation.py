"""Allocation benchmark: the server under load, against references measured in the same run.

    .venv/bin/python benchmarks/allocation.py                 # full run (~3 min), prints Markdown
    .venv/bin/python benchmarks/allocation.py --quick         # ~1 s windows
    .venv/bin/python benchmarks/allocation.py --write docs/performance.md

What runs where (all on 127.0.0.1, every process started here is ended here by PID):

* the server (``serve_fleet.py``) in its own process, default settings, with a synthetic fleet
  of N nodes × 8 GPUs registered in-process; one server per fleet size;
* the echo reference (``echo_server.py``): a bare ``websockets`` server that decodes and
  re-encodes each message with orjson, in its own process;
* the load (``load_client.py``) in a third process: C connections, each keeping W requests in
  flight (1 client: W = 1, pure request/answer latency; 50 clients: W = ``--window``);
  ``adhoc: true`` requests; durable holds (``adhoc: false``) each released as soon as it
  is answered, so occupancy stays at most C × W GPUs; and, where the fleet has GPUs enough
  for the whole run, holds kept (never released: the hold rate alone);
* in this process: the bare numpy kernel (the least numpy work for one binpack decision over
  the same fleet arrays) and the built-in binpack policy (its inputs parsed and its
  internal-protocol ``place`` called per decision as the server does, over a
  :class:`FleetView` of the same documents).

Each measurement: a warm-up, then ``--reps`` back-to-back windows; the median window is
reported. No assertion on any timing: the targets are reported MET / NOT MET (``report.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed
from report import LOAD_BEFORE, Kernel, Load, Timing, document, markdown, others, write
from synthetic_fleet import fleet_documents
from websockets.asyncio.client import connect

from apportion.engine.requests import parse_inputs
from apportion.policies.builtins import BUILTIN_POLICIES
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.fleet import FleetView

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "bench-" + secrets.token_hex(16)
URI = "binpack:1.0-stable"
KEEP_RATE_BOUND = 4000  # holds/s a "keep" run is sized for (above any rate measured here)


# --------------------------------------------------------------------------- processes
def start(
    script: str, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Any]:
    """Start ``benchmarks/<script>`` (with ``env`` added to this process's environment) and
    read the JSON line it prints when ready."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        stdout=subprocess.PIPE,
        stderr=None,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        stop(proc)
        raise RuntimeError(f"{script} did not become ready within {timeout:g} s")
    return proc, orjson.loads(line)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Terminate, then kill after ``timeout`` (only the process we started, by PID)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(
    url: str, pid: int, target: str, nodes: int, mode: str, clients: int, window: int, t: Timing
) -> Load:
    """Run ``load_client.py`` against ``url``; sample the server's CPU while it measures."""
    args = [sys.executable, str(HERE / "load_client.py"), "--url", url, "--key", ADMIN_KEY]
    args += ["--mode", mode, "--clients", str(clients), "--window", str(window)]
    args += ["--warmup", str(t.warmup), "--duration", str(t.duration), "--reps", str(t.reps)]
    server = psutil.Process(pid)
    client = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        time.sleep(t.warmup + 0.5)  # connections and warm-up
        cpu0, wall0 = sum(server.cpu_times()[:2]), time.perf_counter()
        time.sleep(max(0.1, t.reps * t.duration - 1.0))
        server_cpu = (sum(server.cpu_times()[:2]) - cpu0) / (time.perf_counter() - wall0)
        out, _ = client.communicate(timeout=t.warmup + t.reps * t.duration + 120)
    finally:
        stop(client)
    if client.returncode != 0:
        raise RuntimeError(f"load client failed ({client.returncode}) for {target} {mode}")
    reps = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    return Load(
        target, nodes, mode, clients, window,
        rate=statistics.median(r["rate"] for r in reps),
        p50_ms=statistics.median(r["p50_ms"] for r in reps),
        p99_ms=statistics.median(r["p99_ms"] for r in reps),
        errors=sum(r["errors"] for r in reps) + reps[-1]["releases_failed"],
        server_cpu=server_cpu,
        client_cpu=statistics.median(r["client_cpu"] for r in reps),
    )  # fmt: skip


# --------------------------------------------------------------------------- in-process
def per_call_us(fn: Callable[[], object], reps: int, budget: float = 0.3) -> float:
    """Median over ``reps`` blocks of the mean time per call (µs); blocks last ~``budget`` s."""
    fn()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.05:
        fn()
        n += 1
    calls = max(10, int(n * budget / 0.05))
    blocks = []
    for _ in range(max(3, reps)):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        blocks.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(blocks)


def in_process(nodes: int, reps: int) -> tuple[float, float]:
    """(bare kernel µs, binpack policy µs) per decision over the same fleet arrays."""
    docs = [validate_cluster_document(d) for d in fleet_documents(nodes)]
    fleet = FleetView()
    for doc in docs:
        fleet.set_cluster(doc)
    s = fleet.structure
    cand = np.ones(s.n_nodes, dtype=bool)
    never = np.iinfo(np.int64).max

    def kernel(gpus: int = 1) -> list[int]:
        # the least numpy work for one binpack decision: feasibility, key with the
        # (cluster, node) tie-break, argmin, the lowest free GPU indices of the node
        free = fleet.node_free
        ok = cand & (free >= gpus)
        key = np.where(ok, (free.astype(np.int64) - gpus) * s.n_nodes + s.node_rank, never)
        row = int(np.argmin(key))
        start = int(s.node_gpu_start[row])
        local = ~fleet.held[start : start + int(s.node_gpu_count[row])]
        picked: list[int] = np.flatnonzero(local)[:gpus].tolist()
        return picked

    placer = BUILTIN_POLICIES[URI].placement
    candidates = [d["id"] for d in docs]

    def policy() -> object:
        requests, _ = parse_inputs({"gpus": 1})
        return placer.place(fleet, candidates, requests, frozenset())

    return per_call_us(kernel, reps), per_call_us(policy, reps)


async def explain_probe(ws_url: str, count: int) -> tuple[float, float]:
    """p50 / p99 of ``explain.timings_ms.evaluate`` over ``count`` sequential requests."""
    body: dict[str, Any] = {
        "adhoc": True, "policy_rule_uri": URI, "clusters": [], "inputs": {"gpus": 1},
        "filter": {}, "search": {}, "parameters": {}, "settings": {}, "explain": True,
    }  # fmt: skip
    seen = []
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with connect(ws_url, additional_headers=headers, max_size=None) as socket:
        for i in range(count + 20):
            body["request_id"] = f"x-{i}"
            await socket.send(orjson.dumps(body).decode())
            answer = orjson.loads(await socket.recv())
            if i >= 20:
                seen.append(float(answer["explain"]["timings_ms"]["evaluate"]))
    return float(np.percentile(seen, 50)), float(np.percentile(seen, 99))


# --------------------------------------------------------------------------- the run
def measure(args: argparse.Namespace, t: Timing) -> tuple[list[Load], list[Kernel]]:
    loads: list[Load] = []
    kernels: list[Kernel] = []
    shapes = [(1, 1), (args.clients, args.window)]
    echo, ready = start("echo_server.py")
    try:
        for clients, window in shapes:
            loads.append(run_load(ready["ws_url"], echo.pid, "echo", 0, "echo", clients, window, t))
            log(loads[-1])
    finally:
        stop(echo)
    for nodes in args.nodes:
        kernel_us, policy_us = in_process(nodes, t.reps)
        server, ready = start(
            "serve_fleet.py", "--nodes", str(nodes), env={"APPORTION_ADMIN_KEY": ADMIN_KEY}
        )
        try:
            p50, p99 = asyncio.run(explain_probe(ready["ws_url"], 300))
            kernels.append(Kernel(nodes, kernel_us, policy_us, p50, p99))
            sys.stderr.write(f"{kernels[-1]}\n")
            for mode in ("adhoc", "hold"):
                for c, w in shapes:
                    loads.append(
                        run_load(ready["ws_url"], server.pid, "server", nodes, mode, c, w, t)
                    )
                    log(loads[-1])
            # last: kept holds fill the fleet (one GPU each); only where it cannot run out
            c, w = shapes[-1]
            if nodes * 8 >= KEEP_RATE_BOUND * (t.warmup + t.reps * t.duration + 2):
                loads.append(
                    run_load(ready["ws_url"], server.pid, "server", nodes, "keep", c, w, t)
                )
                log(loads[-1])
        finally:
            stop(server)
    return loads, kernels


def log(load: Load) -> None:
    sys.stderr.write(
        f"{load.target:6} nodes={load.nodes:<6} {load.mode:5} {load.clients}x{load.window}: "
        f"{load.rate:8.0f}/s p50 {load.p50_ms:7.2f} ms p99 {load.p99_ms:7.2f} ms "
        f"errors {load.errors} server cpu {load.server_cpu:.2f} client cpu {load.client_cpu:.2f}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 s windows, short warm-up")
    parser.add_argument(
        "--write", type=Path, help="also write the report (e.g. docs/performance.md)"
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--clients", type=int, default=50, help="the concurrent client count")
    parser.add_argument("--window", type=int, default=4, help="in flight per client (C > 1)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    t = Timing(0.3, 1.0, args.reps) if args.quick else Timing(1.0, 5.0, args.reps)
    if LOAD_BEFORE[0] > 0.5:
        sys.stderr.write(
            f"warning: load average {LOAD_BEFORE[0]:.2f}: other work may lower the figures\n"
        )
    loads, kernels = measure(args, t)
    table = markdown(loads, kernels, args)
    sys.stdout.write(table)
    if args.write is not None:
        command = "python benchmarks/allocation.py " + " ".join(argv or sys.argv[1:])
        write(args.write, document(table, args, t, command.strip()))
    sys.stderr.write(f"processes not started by this run used {others():.2f} cores meanwhile\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
