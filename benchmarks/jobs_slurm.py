"""The Slurm side of ``jobs.py``: find (or start) the test Slurm, and the direct reference.

:func:`find_slurm` returns the ready nodes of partition ``gpu`` and their GPUs, running
``scripts/slurm_up.sh`` first when Slurm is installed but not up and we are root; otherwise the
reason there is none (the benchmark then skips only its Slurm part).

:func:`direct_run` is the reference the engine is compared with: a loop of ``sbatch`` (argv
lists, never a shell string) submitting the same script N times, then ``squeue`` polled until
none of those jobs is pending or running. :func:`cancel_left` ends, by job id, whatever a run
left behind. Every Slurm command here has a timeout; none touches a job it did not submit.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from jobs_report import Run

REPO = Path(__file__).resolve().parent.parent
PARTITION = "gpu"
READY = ("idle", "mix", "mixed", "alloc", "allocated")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE")  # fmt: skip
POLL = 0.1  # s between squeue calls (the engine side polls GET /queue as often)


@dataclass(frozen=True)
class Slurm:
    nodes: tuple[str, ...]
    gpus: int  # GPUs of the ready nodes together


def _run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _ready() -> Slurm | None:
    if shutil.which("sinfo") is None:
        return None
    try:
        out = _run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t %G", timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    nodes: dict[str, int] = {}
    for parts in (line.split() for line in out.stdout.splitlines()):
        if out.returncode == 0 and len(parts) == 3 and parts[1] in READY:
            gres = [g for g in parts[2].split(",") if g.startswith("gpu:")]
            nodes[parts[0]] = int(gres[0].rsplit(":", 1)[1].split("(")[0]) if gres else 0
    return Slurm(tuple(sorted(nodes)), sum(nodes.values())) if nodes else None


def find_slurm() -> Slurm | str:
    """The ready Slurm (partition ``gpu``), after ``scripts/slurm_up.sh`` if needed; or why not."""
    found = _ready()
    if found is not None:
        return found
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        return "Slurm is not installed (see docs/slurm.md: scripts/slurm_up.sh)"
    if os.geteuid() != 0:
        return "Slurm is not up and scripts/slurm_up.sh needs root"
    try:
        done = _run("bash", str(REPO / "scripts" / "slurm_up.sh"), timeout=300)
    except subprocess.TimeoutExpired:
        return "scripts/slurm_up.sh did not finish within 300 s"
    found = _ready()
    if found is None:
        return f"Slurm did not come up: {(done.stderr or done.stdout).strip()[-300:]}"
    return found


async def _tool(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.decode().strip()[:300]}")
    return proc.returncode, out.decode()


async def states(ids: list[str]) -> dict[str, str]:
    """``{slurm job id: state}`` of ``ids`` that Slurm still lists (MinJobAge keeps ended jobs)."""
    if not ids:
        return {}
    _, out = await _tool("squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(ids))
    wanted = set(ids)
    return {p[0]: p[1] for p in (x.split() for x in out.splitlines()) if p and p[0] in wanted}


async def wait_ended(ids: list[str], deadline: float) -> dict[str, str]:
    """Poll ``squeue`` every :data:`POLL` s until every job of ``ids`` has ended."""
    while True:
        seen = await states(ids)
        if all(seen.get(i, "COMPLETED") in ENDED for i in ids):
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm jobs still not finished: {sorted(set(seen))[:10]} …")
        await asyncio.sleep(POLL)


def _script(work: Path, argv: list[str]) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    script = work / "direct.sh"
    script.write_text(f"#!/bin/sh\nexec {shlex.join(argv)}\n")
    return script


async def direct_run(argv: list[str], jobs: int, gpus: int, work: Path, left: list[str]) -> Run:
    """``jobs`` × ``sbatch`` of a script that ``exec``\\ s ``argv``, then wait until all ended.

    Every Slurm id is appended to ``left`` as soon as it is known, for :func:`cancel_left`."""
    script = await asyncio.to_thread(_script, work, argv)
    sbatch = [
        "sbatch", "--parsable", "--job-name=apportion-bench-direct", "--export=NONE",
        "--no-requeue", f"--partition={PARTITION}", "--nodes=1", "--ntasks=1",
        f"--output={work}/direct-%j.log", f"--chdir={work}",
    ]  # fmt: skip
    if gpus:
        sbatch.append(f"--gres=gpu:{gpus}")
    ids: list[str] = []
    start = time.perf_counter()
    for _ in range(jobs):
        _, out = await _tool(*sbatch, str(script))
        ids.append(out.strip().split(";")[0])
        left.append(ids[-1])
    submitted = time.perf_counter() - start
    seen = await wait_ended(ids, time.monotonic() + 600)
    seconds = time.perf_counter() - start
    failed = sum(seen.get(i, "COMPLETED") != "COMPLETED" for i in ids)
    return Run(jobs, seconds, submitted, failed)


async def cancel_left(ids: list[str]) -> list[str]:
    """``scancel`` the jobs of ``ids`` that have not ended (by id); the ids cancelled."""
    try:
        seen = await states(ids)
    except RuntimeError:
        seen = {}
    alive = sorted(i for i, s in seen.items() if s not in ENDED)
    if alive:
        await _tool("scancel", *alive)
    return alive
