"""Job-throughput benchmark: jobs through admission and an adapter, against the same work
driven directly, measured in the same run (issue 3).

    .venv/bin/python benchmarks/jobs.py                        # full run, prints Markdown
    .venv/bin/python benchmarks/jobs.py --quick                # small N, one repetition
    .venv/bin/python benchmarks/jobs.py --write docs/performance.md

What is measured (all on 127.0.0.1; every process started here is ended here by PID, every
Slurm job submitted here that has not ended is ``scancel``-ed by id):

* **Engine.** A fresh server (``serve_fleet.py``: :class:`apportion.app.Server`, default
  settings, its data and jobs directories in a temporary directory kept until the run ends)
  per repetition and adapter, in its own process. ``--submitters``
  concurrent coroutines over one aiohttp session ``POST /jobs/submit`` N jobs, each
  ``{"command": ["/bin/true"], "resources": {"gpus": 1}}`` (one worker, exits at once), as fast as
  the API answers. Then ``GET /queue`` is polled until no job is queued, scheduled or running;
  finally every job is checked to be ``completed``. Engine rate = N ÷ (first submit sent →
  that poll), in jobs/s.
* **Local adapter.** The fleet is ⌈N/8⌉ nodes × 8 GPUs of scheduler type ``local``, so every
  job fits at once. What could throttle admission and how it is set: ``max_concurrent_jobs`` is
  left unset (unlimited; ``PUT /pool/limits`` takes only 1–100 — ``--concurrency K`` sets it),
  the ``default`` queue has no worker cap (``maximum_allowed_worker_instances`` −1) and the
  starvation bound never triggers (every job fits). Direct reference: the same argv spawned N
  times with :func:`asyncio.create_subprocess_exec`, at most *bound* at a time (N, or K), timed
  first spawn → last exit.
* **Slurm.** The single-host Slurm of ``scripts/slurm_up.sh`` (started if installed, down and
  we are root), partition ``gpu``, registered as one cluster (discovered from ``sinfo``) with a
  queue pinned to it. Direct reference: a loop of ``sbatch`` (``jobs_slurm.direct_run``) of a
  script that ``exec``\\ s the same argv, ``--gres=gpu:1``, then ``squeue`` every 100 ms until
  all ended. Both sides are bounded by the cluster's GPUs. No Slurm: that part is skipped.

Each repetition runs engine and reference back to back (alternating which goes first); the
reported figures are medians over ``--reps``. No assertion on any timing: the target
"engine ≥ 80% of the direct rate" is reported MET / NOT MET (``jobs_report.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped, unused-ignore]
from allocation import start, stop
from jobs_report import Comparison, Memory, Run, phases, section, write_section
from jobs_slurm import Slurm, cancel_left, direct_run, find_slurm
from report import LOAD_BEFORE, others

ADMIN_KEY = "bench-" + secrets.token_hex(16)
ARGV = ["/bin/true"]
DEADLINE = 900.0  # s a single pass may take before the benchmark gives up


@contextmanager
def server(nodes: int, under: Path) -> Iterator[tuple[str, int]]:
    """A fresh server with ``nodes`` × 8 local GPUs, in its own process; its URL and PID. Its
    files stay in ``under`` until the benchmark ends: deleting thousands of files between
    repetitions would slow the next one's file creations (docs/performance.md)."""
    root = Path(tempfile.mkdtemp(prefix="server-", dir=under))
    argv = ["serve_fleet.py", "--nodes", str(nodes), "--root", str(root)]
    proc, ready = start(*argv, env={"APPORTION_ADMIN_KEY": ADMIN_KEY})
    try:
        yield str(ready["url"]), proc.pid
    finally:
        stop(proc)


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as response:
        body = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{method} {url} → {response.status}: {body}")
        return body


async def engine_run(
    http: aiohttp.ClientSession,
    url: str,
    config: dict[str, Any],
    jobs: int,
    args: argparse.Namespace,
    *,
    as_array: bool = False,
    histories: bool = True,
    pid: int | None = None,
) -> Run:
    """Submit ``jobs`` copies of ``config`` with ``args.submitters`` coroutines (``as_array``:
    one submit of an array of ``jobs`` tasks); time until the server has none
    queued/scheduled/running; count the jobs that did not end ``completed``; with
    ``histories``, check the server lists every job and read each one's status history for the
    phases; with the server's ``pid`` (local), measure the CPU it and its executor spent in the
    timed part."""
    left = iter(range(jobs))
    body = {"config": config}
    cpu_before = cpu_of(pid) if pid is not None else (math.nan, math.nan)

    async def submitter() -> None:
        for _ in left:  # the shared iterator hands out the N submits
            await call(http, "POST", f"{url}/jobs/submit", json=body)

    began = time.perf_counter()
    if as_array:
        arrayed = {"config": {**config, "array": f"0-{jobs - 1}"}}
        await call(http, "POST", f"{url}/jobs/submit", json=arrayed)
    else:
        await asyncio.gather(*(submitter() for _ in range(args.submitters)))
    submitted = time.perf_counter() - began
    deadline = time.monotonic() + DEADLINE
    while True:
        stats = await call(http, "GET", f"{url}/queue")
        if stats["total_queued"] == 0 and stats["running_jobs"] == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {DEADLINE:g} s: {stats}")
        await asyncio.sleep(args.poll)
    seconds = time.perf_counter() - began
    cpu_after = cpu_of(pid) if pid is not None else (math.nan, math.nan)
    server_cpu, executor_cpu = (a - b for a, b in zip(cpu_after, cpu_before, strict=True))
    if not histories:  # only the jobs that did not complete are listed: a list of every job
        # would be a large answer the server builds, whose room its allocator then keeps
        failed = 0
        for status in ("failed", "cancelled"):  # nothing is queued, scheduled or running now
            listed = {"status": status, "limit": "10000"}
            failed += len(await call(http, "GET", f"{url}/jobs", params=listed))
        return Run(jobs, seconds, submitted, failed, (), server_cpu, executor_cpu)
    records = await call(http, "GET", f"{url}/jobs", params={"limit": "10000"})
    failed = sum(r["status"] != "completed" for r in records)
    if len(records) != jobs:
        raise RuntimeError(f"submitted {jobs} jobs, the server lists {len(records)}")
    gate = asyncio.Semaphore(8)  # after the timed part: each job's status history

    async def history(job_id: str) -> Any:
        async with gate:
            return await call(http, "GET", f"{url}/jobs/{job_id}/statuses")

    steps = await asyncio.gather(*(history(r["job_id"]) for r in records))
    return Run(jobs, seconds, submitted, failed, phases(steps), server_cpu, executor_cpu)


def cpu_of(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the server ``pid`` (all its threads) and of its local executor
    with the jobs it started and reaped, and its spawners (one per job user, the executor's
    children until it exits) with the jobs they started and reaped (0 before it started)."""
    server = psutil.Process(pid)
    times = server.cpu_times()
    executor = 0.0
    for child in server.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(arg.endswith("executor.py") for arg in child.cmdline()):
                t = child.cpu_times()
                executor += t.user + t.system + t.children_user + t.children_system
    return times.user + times.system, executor


async def direct_local(jobs: int, bound: int) -> Run:
    """The same argv, ``jobs`` times, at most ``bound`` at a time: first spawn → last exit."""
    gate = asyncio.Semaphore(bound)
    devnull = asyncio.subprocess.DEVNULL

    async def one() -> int:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                *ARGV, stdin=devnull, stdout=devnull, stderr=devnull
            )
            return await proc.wait()

    began = time.perf_counter()
    codes = await asyncio.gather(*(one() for _ in range(jobs)))
    return Run(jobs, time.perf_counter() - began, failed=sum(c != 0 for c in codes))


async def local_rep(
    args: argparse.Namespace, rep: int, result: Comparison, *, as_array: bool = False
) -> None:
    bound = args.concurrency or args.jobs

    async def engine() -> None:
        with server(max(1, math.ceil(args.jobs / 8)), args.servers_root) as (url, pid):
            async with session() as http:
                if args.concurrency:
                    limit = {"max_concurrent_jobs": args.concurrency}
                    await call(http, "PUT", f"{url}/pool/limits", json=limit)
                config = {"name": "bench", "command": ARGV, "resources": {"gpus": 1}}
                run = await engine_run(
                    http, url, config, args.jobs, args, as_array=as_array, pid=pid
                )
                result.engine.append(run)

    async def direct() -> None:
        result.direct.append(await direct_local(args.jobs, bound))

    await both(rep, engine, direct)


async def slurm_rep(
    args: argparse.Namespace,
    rep: int,
    result: Comparison,
    work: Path,
    *,
    as_array: bool = False,
) -> None:
    submitted: list[str] = []

    async def engine() -> None:
        with server(0, args.servers_root) as (url, _):
            async with session() as http:
                try:
                    await slurm_engine(http, url, args, result, as_array=as_array)
                finally:  # the Slurm ids the engine used, for cancel_left
                    try:
                        params = {"limit": "10000"}
                        records = await call(http, "GET", f"{url}/jobs", params=params)
                    except (aiohttp.ClientError, RuntimeError) as exc:
                        sys.stderr.write(f"could not list the engine's Slurm jobs: {exc}\n")
                        records = []
                    submitted.extend(
                        str(r["scheduler_job_id"]) for r in records if r["scheduler_job_id"]
                    )

    async def direct() -> None:
        result.direct.append(await direct_run(ARGV, args.slurm_jobs, 1, work, submitted))

    try:
        await both(rep, engine, direct)
    finally:
        cancelled = await cancel_left(submitted)
        if cancelled:
            sys.stderr.write(f"scancel-ed {len(cancelled)} job(s) left running: {cancelled}\n")


async def slurm_engine(
    http: aiohttp.ClientSession,
    url: str,
    args: argparse.Namespace,
    result: Comparison,
    *,
    as_array: bool = False,
) -> None:
    scheduler = {"type": "slurm", "partition": "gpu", "gpu_memory_mb": 16384}
    await call(
        http,
        "POST",
        f"{url}/clusters",
        json={"id": "bench-hpc", "config": {"scheduler": scheduler}},
    )
    queue = {"name": "bench-hpc", "clusters": ["bench-hpc"], "plugin": "slurm"}
    await call(http, "POST", f"{url}/queues", json=queue)
    config = {"name": "bench", "queue": "bench-hpc", "command": ARGV, "resources": {"gpus": 1}}
    run = await engine_run(http, url, config, args.slurm_jobs, args, as_array=as_array)
    result.engine.append(run)


async def memory_run(args: argparse.Namespace) -> Memory:
    """The server's resident memory after a warm-up of 200 jobs, then after each of two
    passes of ``args.memory_jobs / 2`` more (one array each; a fleet where each fits at once):
    the second pass shows what a finished job keeps, once the allocator has its room."""
    config = {"name": "memory", "command": ARGV, "resources": {"gpus": 1}}
    half = max(1, args.memory_jobs // 2)
    with server(max(1, math.ceil(half / 8)), args.servers_root) as (url, pid):
        async with session() as http:
            await engine_run(http, url, config, 200, args, as_array=True, histories=False)
            rss = [psutil.Process(pid).memory_info().rss]
            runs = []
            for _ in range(2):
                runs.append(
                    await engine_run(http, url, config, half, args, as_array=True, histories=False)
                )
                rss.append(psutil.Process(pid).memory_info().rss)
    failed = sum(run.failed for run in runs)
    if failed:
        raise RuntimeError(f"{failed} job(s) of the memory passes did not complete")
    return Memory(half, *rss, runs[-1].seconds)


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"})


async def both(
    rep: int, engine: Callable[[], Awaitable[None]], direct: Callable[[], Awaitable[None]]
) -> None:
    """Engine and reference back to back; which goes first alternates with the repetition."""
    for step in (engine, direct) if rep % 2 == 0 else (direct, engine):
        await step()


def show(name: str, result: Comparison) -> None:
    e, d = result.engine[-1], result.direct[-1]
    sys.stderr.write(
        f"{name}: engine {e.rate:7.1f} jobs/s ({e.seconds:.2f} s, submit {e.submit_seconds:.2f} s,"
        f" {e.failed} not completed); direct {d.rate:7.1f} jobs/s ({d.seconds:.2f} s, "
        f"{d.failed} not completed)\n"
    )


async def measure(args: argparse.Namespace) -> list[Comparison]:
    bound = args.concurrency or args.jobs
    local = Comparison("local", args.jobs, f"{bound} jobs at a time")
    results = [local]
    for rep in range(args.reps):
        args.poll = 0.01
        await local_rep(args, rep, local)
        show(f"local rep {rep + 1}", local)
    arrayed = Comparison("local, one array", args.jobs, f"{bound} jobs at a time")
    results.append(arrayed)
    for rep in range(args.reps):
        args.poll = 0.01
        await local_rep(args, rep, arrayed, as_array=True)
        show(f"local array rep {rep + 1}", arrayed)
    found: Slurm | str = "--no-slurm" if args.no_slurm else find_slurm()
    if isinstance(found, str):
        sys.stderr.write(f"Slurm part skipped: {found}\n")
        results.append(Comparison("slurm", args.slurm_jobs, "—", skipped=found))
        return results
    words = f"the cluster's {found.gpus} GPUs ({len(found.nodes)} nodes), 1 per job"
    slurm = Comparison("slurm", args.slurm_jobs, words)
    results.append(slurm)
    slurm_array = Comparison("slurm, one array", args.slurm_jobs, words)
    results.append(slurm_array)
    with tempfile.TemporaryDirectory(prefix="apportion-bench-sbatch-") as tmp:
        for rep in range(args.reps):
            args.poll = 0.1
            await slurm_rep(args, rep, slurm, Path(tmp))
            show(f"slurm rep {rep + 1}", slurm)
            await slurm_rep(args, rep, slurm_array, Path(tmp), as_array=True)
            show(f"slurm array rep {rep + 1}", slurm_array)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=20 local, 8 Slurm, 1 repetition")
    parser.add_argument("--write", type=Path, help="also write the section into this file")
    parser.add_argument("--jobs", type=int, default=200, help="N through the local adapter")
    parser.add_argument("--slurm-jobs", type=int, default=50, help="N through Slurm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--submitters", type=int, default=4, help="concurrent REST submitters")
    parser.add_argument(
        "--concurrency", type=int, choices=range(1, 101), metavar="1..100",
        help="set max_concurrent_jobs (and bound the direct spawns alike); default: unlimited",
    )  # fmt: skip
    parser.add_argument("--no-slurm", action="store_true", help="skip the Slurm part")
    parser.add_argument(
        "--memory-jobs", type=int, default=10_000, choices=range(0, 10_001), metavar="0..10000",
        help="finished jobs the server's memory is measured over, in two passes of half (0: not)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.slurm_jobs, args.reps, args.memory_jobs = 20, 8, 1, 0
    if LOAD_BEFORE[0] > 0.5:
        sys.stderr.write(f"warning: load average {LOAD_BEFORE[0]:.2f}: figures will be noisy\n")
    with tempfile.TemporaryDirectory(prefix="apportion-bench-") as servers_root:
        args.servers_root = Path(servers_root)  # every server's files, removed at the end
        args.servers_root.chmod(0o711)  # the jobs' users pass through to their directories
        results = asyncio.run(measure(args))
        memory = None
        if args.memory_jobs:
            args.poll = 0.1
            memory = asyncio.run(memory_run(args))
            sys.stderr.write(memory.line())
    command = "python benchmarks/jobs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = section(results, command.strip(), args.submitters, args.reps, memory)
    sys.stdout.write(text)
    if args.write is not None and not write_section(args.write, text):
        sys.stderr.write(f"warning: {args.write} has no KEEP marker before the section\n")
    sys.stderr.write(f"processes not started by this run used {others():.2f} cores meanwhile\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
