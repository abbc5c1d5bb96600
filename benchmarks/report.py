"""Results of ``allocation.py`` and how they are reported: the Markdown tables, the targets
(MET / NOT MET), the machine facts and ``docs/performance.md``.

``write`` replaces the generated part of the file and keeps whatever follows ``KEEP_MARKER``
(the hand-written analysis of what stands in the way).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed
from websockets.version import version as websockets_version

HERE = Path(__file__).resolve().parent
KEEP_MARKER = "<!-- Written by hand below this line; kept by --write. -->"
LOAD_BEFORE = os.getloadavg()  # other work on the machine when the run started


def cpu_seconds() -> tuple[float, float, float]:
    """(machine busy CPU s, this process + its waited-for children CPU s, wall s)."""
    t = psutil.cpu_times()
    own = os.times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, own.user + own.system + own.children_user + own.children_system, time.time()


CPU_BEFORE = cpu_seconds()


@dataclass
class Load:
    """One load measurement (medians over the repetitions)."""

    target: str  # "echo" or "server"
    nodes: int
    mode: str
    clients: int
    window: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float
    client_cpu: float


@dataclass
class Kernel:
    nodes: int
    kernel_us: float
    policy_us: float
    explain_p50_ms: float
    explain_p99_ms: float


@dataclass(frozen=True)
class Timing:
    warmup: float
    duration: float
    reps: int


def echo_for(loads: list[Load], clients: int) -> Load:
    return next(x for x in loads if x.target == "echo" and x.clients == clients)


def targets(loads: list[Load], kernels: list[Kernel], clients: int) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the issue, at the largest fleet."""
    nodes = max(k.nodes for k in kernels)

    def server(mode: str, c: int) -> Load:
        return next(
            x for x in loads if (x.target, x.nodes, x.mode, x.clients) == ("server", nodes, mode, c)
        )

    adhoc, cycle, single = server("adhoc", clients), server("hold", clients), server("adhoc", 1)
    kept = [x for x in loads if (x.target, x.nodes, x.mode) == ("server", nodes, "keep")]
    hold = kept[0] if kept else cycle
    hold_text = f"{hold.rate:,.0f}/s" + (
        f" (hold + release cycles: {cycle.rate:,.0f}/s)" if kept else " (each released)"
    )
    echo_many, echo_one = echo_for(loads, clients), echo_for(loads, 1)
    k = next(k for k in kernels if k.nodes == nodes)
    n = f"{nodes:,} nodes"
    return [
        (f"≥ 5,000 adhoc allocations/s, {clients} clients, {n}", f"{adhoc.rate:,.0f}/s",
         adhoc.rate >= 5000 and adhoc.errors == 0),
        (f"adhoc rate ≥ 1/10 of the echo's ({clients} clients)",
         f"{adhoc.rate / echo_many.rate:.3f} of {echo_many.rate:,.0f}/s",
         adhoc.rate * 10 >= echo_many.rate),
        (f"≥ 2,000 durable holds/s ({clients} clients, {n})", hold_text,
         hold.rate >= 2000 and hold.errors == 0),
        (f"single-client p99 ≤ 10× the echo's p99 ({n})",
         f"{single.p99_ms:.2f} ms = {single.p99_ms / echo_one.p99_ms:.1f}× {echo_one.p99_ms:.2f} ms",
         single.p99_ms <= 10 * echo_one.p99_ms),
        (f"policy evaluation ≤ 4× the bare kernel ({n}, in-process eval)",
         f"{k.policy_us:.0f} µs = {k.policy_us / k.kernel_us:.1f}× {k.kernel_us:.0f} µs",
         k.policy_us <= 4 * k.kernel_us),
    ]  # fmt: skip


def markdown(loads: list[Load], kernels: list[Kernel], args: argparse.Namespace) -> str:
    clients = args.clients
    lines = [
        "| server | fleet (nodes × 8 GPUs) | request | clients × window | rate (req/s) "
        "| p50 (ms) | p99 (ms) | rate ÷ echo | p99 ÷ echo p99 | server CPU | client CPU | errors |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in loads:
        ref = echo_for(loads, x.clients)
        fleet = "—" if x.target == "echo" else f"{x.nodes:,}"
        request = {"echo": "same message, echoed", "adhoc": "adhoc: true",
                   "hold": "adhoc: false + release", "keep": "adhoc: false, kept"}[x.mode]  # fmt: skip
        lines.append(
            f"| {x.target} | {fleet} | {request} | {x.clients} × {x.window} | {x.rate:,.0f} "
            f"| {x.p50_ms:.2f} | {x.p99_ms:.2f} | {x.rate / ref.rate:.3f} "
            f"| {x.p99_ms / ref.p99_ms:.1f} | {x.server_cpu:.2f} | {x.client_cpu:.2f} | {x.errors} |"
        )
    lines += [
        "",
        "| fleet | bare kernel (µs) | binpack eval in-process (µs) | ratio "
        "| server's evaluate phase, explain p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in kernels:
        lines.append(
            f"| {k.nodes:,} | {k.kernel_us:.1f} | {k.policy_us:.1f} "
            f"| {k.policy_us / k.kernel_us:.2f} | {k.explain_p50_ms:.3f} / {k.explain_p99_ms:.3f} |"
        )
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    for name, measured, met in targets(loads, kernels, clients):
        lines.append(f"| {name} | {measured} | {'MET' if met else '**NOT MET**'} |")
    return "\n".join(lines) + "\n"


def tree() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git)."""
    git = ["git", "-C", str(HERE.parent), "--no-optional-locks"]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--"], capture_output=True).returncode
    return head.stdout.strip() + (" with uncommitted changes" if dirty else "")


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in values)


def others() -> float:
    """Average cores used during the run by processes this run did not start."""
    busy0, own0, wall0 = CPU_BEFORE
    busy1, own1, wall1 = cpu_seconds()
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(1e-9, wall1 - wall0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"- source: commit {tree()}\n"
        f"- {os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"websockets {websockets_version}, orjson {orjson.__version__}\n"
        f"- other work on the machine: load average {_load(LOAD_BEFORE)} (1/5/15 min) when the "
        f"run started; during the run, processes not started by it used {others():.2f} cores "
        "on average\n"
    )


def document(table: str, args: argparse.Namespace, t: Timing, command: str) -> str:
    return (
        "# Performance\n\n"
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n"
        f"{machine()}"
        f"- each row: {t.warmup:g} s warm-up, then {t.reps} windows of {t.duration:g} s; the "
        "median window is shown (rate, p50, p99 each the median over the windows)\n"
        f"- load: one client process, asyncio + `websockets`; 1 client sends one request at a "
        f"time (window 1); {args.clients} clients keep {args.window} requests in flight each\n"
        '- request: `binpack:1.0-stable`, `inputs: {"gpus": 1}`, no filter (every live '
        f"cluster is a candidate); fleets of 100-node clusters, 8 GPUs per node\n"
        '- holds: `adhoc: false`, each released (`{"type": "release"}`) as soon as its answer '
        "arrives; the release is sent without waiting and not timed, so the server handles "
        "one release per hold on top of the rate shown; *kept* holds are never released (the "
        "hold rate alone; run last on a fleet with GPUs enough for every hold of the run)\n"
        "- server CPU / client CPU: CPU seconds per wall second of each process while measuring "
        "(1.00 = one core; the machine has "
        f"{os.cpu_count()})\n"
        "- policy evaluation: judged in-process (the built-in's inputs parsed and its `place` called "
        "per decision over a `FleetView` of the same documents, as the server calls it); the "
        "server's own `explain.timings_ms.evaluate` (the same work through the runtime, timed in the server) is shown "
        "beside it\n\n"
        f"{table}"
    )


def write(path: Path, text: str) -> None:
    """Write the generated part; keep what follows ``KEEP_MARKER`` in an existing file."""
    kept = f"\n{KEEP_MARKER}\n"
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = f"\n{KEEP_MARKER}{old.split(KEEP_MARKER, 1)[1]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + kept)
