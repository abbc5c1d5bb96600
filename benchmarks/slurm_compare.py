"""The simulator against a real Slurm on the same trace (issue 10: "the results compared with a
real Slurm's backfill and fair share").

    sudo .venv/bin/python benchmarks/slurm_compare.py                  # both parts, ~25 min
    sudo .venv/bin/python benchmarks/slurm_compare.py --part backfill  # ~11 min
    .venv/bin/python benchmarks/slurm_compare.py --write examples/simulate/slurm-compare.csv

Each part replays the trace (``examples/simulate/slurm-compare.csv``: three teams on 12 GPUs,
about 10 minutes of work) twice:

* on a real Slurm 22.05 started by ``scripts/slurm_up.sh`` (3 nodes × 4 fake GPUs), in real
  time: each job is ``sbatch --nodes=W --ntasks-per-node=1 --gres=gpu:G --time=M`` of a script
  that sleeps for its duration, submitted at its submit time; its start and end are Slurm's
  (``squeue --json``, whole seconds);
* through ``apportion.sim`` on a fleet of the same shape, with the matching configuration.

The parts:

* ``backfill``: Slurm as the tests run it (``priority/basic``: first come, first served, with
  ``sched/backfill``) against the simulator's ``backfill = "easy"`` with the default weights;
* ``fairshare``: ``SLURM_ACCOUNTING=slurmdbd`` (``priority/multifactor``, fair share
  ``2^(-U/S)`` per account, GPU-seconds as usage, half-life 10 min, weights fair share 10000
  and age 100 over 10 min), each account made by ``sacctmgr`` with the trace's shares, against
  the same weights, half-life and shares in the simulator.

Both sides are summarised by ``apportion.sim.report`` (mean and p95 wait, bounded slowdown,
GPU utilisation, fairness), plus each account's mean wait, the jobs that started before an
earlier submitted one, and how far the two agree job by job: the median and largest difference
of a job's start, and the part of job pairs started in the same order. Slurm is restarted for
each part (``slurm_down.sh`` then ``slurm_up.sh``) and stopped at the end; every job is ended
by ``scancel`` of its id if the run stops early. Must run as root (it starts the daemons).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from apportion.jobs.priority import PriorityWeights, SchedulingConfig
from apportion.sim.engine import Outcome, SimConfig, SimResult, simulate, synthetic_fleet
from apportion.sim.report import Summary, summarize
from apportion.sim.trace import TraceJob, read_trace

REPO = Path(__file__).resolve().parent.parent
TRACE = REPO / "examples" / "simulate" / "slurm-compare.csv"
NODES, GPUS_PER_NODE = 3, 4  # scripts/slurm_up.sh's defaults
SHARES = {"vision": 2, "nlp": 1, "speech": 1}
HALF_LIFE_MINUTES, MAX_AGE_MINUTES = 10, 10
WEIGHT_FAIRSHARE, WEIGHT_AGE = 10_000, 100
SAME_TIME = 1.0  # s: Slurm's times are whole seconds; starts closer than this are a tie


# ------------------------------------------------------------------------------ the trace
def workload(seed: int = 11) -> list[TraceJob]:
    """Three teams on 12 GPUs: speech fills the line first with 4-GPU jobs, vision follows
    with 2 × 4-GPU gangs that hold the head of the line, nlp with small short jobs that can be
    backfilled; about 1.2 × what the GPUs can run in the span of the arrivals."""
    rng = random.Random(seed)
    jobs: list[TraceJob] = []

    def add(submit: float, account: str, workers: int, gpus: int, low: float, high: float) -> None:
        duration = round(rng.uniform(low, high))
        walltime = 60 * math.ceil(duration * rng.uniform(1.1, 1.6) / 60)
        jobs.append(
            TraceJob(str(len(jobs) + 1), submit, account, workers, gpus, duration, walltime)
        )

    for i in range(6):
        add(2.0 * i, "speech", 1, 4, 60, 120)
    for i in range(5):
        add(20.0 + 50 * i, "vision", 2, 4, 45, 90)
    for i in range(12):
        add(10.0 + 25 * i, "nlp", 1, rng.choice([1, 1, 2]), 25, 65)
    for i in range(4):
        add(150.0 + 30 * i, "speech", 1, rng.choice([2, 4]), 60, 90)
    return sorted(jobs, key=lambda j: (j.submit, int(j.job_id)))


def write_trace(jobs: list[TraceJob], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["submit_time", "account", "workers", "gpus_per_worker", "duration", "walltime"]
        )
        for j in jobs:
            writer.writerow([j.submit, j.account, j.workers, j.gpus, j.duration, j.walltime])


# ------------------------------------------------------------------------------ the Slurm side
def _run(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return done.stdout


def restart_slurm(accounting: bool) -> None:
    """Slurm of ``scripts/slurm_up.sh``, with or without slurmdbd and multifactor priority."""
    _run("bash", str(REPO / "scripts" / "slurm_down.sh"), timeout=120)
    env = dict(os.environ)
    if accounting:
        env |= {
            "SLURM_ACCOUNTING": "slurmdbd",
            "SLURM_HALF_LIFE": str(HALF_LIFE_MINUTES),
            "SLURM_MAX_AGE": str(MAX_AGE_MINUTES),
            "SLURM_WEIGHT_FAIRSHARE": str(WEIGHT_FAIRSHARE),
            "SLURM_WEIGHT_AGE": str(WEIGHT_AGE),
        }
    _run("bash", str(REPO / "scripts" / "slurm_up.sh"), env=env, timeout=600)
    if accounting:
        make_accounts()


def make_accounts() -> None:
    """Each account of :data:`SHARES` with its shares, root a user of each, no usage yet;
    root's own association under the root account is removed, so the accounts share the
    whole fleet."""
    listed = _run("sacctmgr", "-n", "-P", "list", "account", "format=account").split()
    for account, shares in SHARES.items():
        if account not in listed:
            _run("sacctmgr", "-i", "add", "account", account, f"fairshare={shares}")
        else:
            _run("sacctmgr", "-i", "modify", "account", account, "set", f"fairshare={shares}")
    associations = _run("sacctmgr", "-n", "-P", "list", "assoc", "user=root", "format=account")
    missing = [a for a in SHARES if a not in associations.split()]
    if missing:
        _run("sacctmgr", "-i", "add", "user", "root", f"account={','.join(missing)}")
    _run("sacctmgr", "-i", "modify", "user", "root", "set", f"defaultaccount={next(iter(SHARES))}")
    if "root" in associations.split():
        _run("sacctmgr", "-i", "remove", "user", "root", "account=root")
    # a run before this one left usage behind (the database is kept): start from none
    for account in SHARES:
        _run("sacctmgr", "-i", "modify", "account", account, "set", "RawUsage=0")
        _run("sacctmgr", "-i", "modify", "user", "root", f"account={account}", "set", "RawUsage=0")


@dataclass
class SlurmJob:
    job: TraceJob
    slurm_id: str = ""


def replay_on_slurm(trace: list[TraceJob], accounting: bool, work: Path) -> list[Outcome]:
    """Submit each job at its submit time (real time), wait for all to end; their outcomes,
    times relative to the first submit."""
    script = work / "job.sh"
    script.write_text('#!/bin/sh\nexec sleep "$1"\n', encoding="utf-8")
    script.chmod(0o755)
    submitted: list[SlurmJob] = []
    t0 = time.time()
    try:
        for job in trace:
            time.sleep(max(0.0, t0 + job.submit - time.time()))
            argv = [
                "sbatch", "--parsable", "--partition=gpu", f"--nodes={job.workers}",
                "--ntasks-per-node=1", f"--gres=gpu:{job.gpus}",
                f"--time={math.ceil((job.walltime or 60) / 60)}",
                f"--job-name=compare-{job.job_id}", "--output=/dev/null", "--export=NONE",
                "--no-requeue", f"--chdir={work}",
            ]  # fmt: skip
            if accounting:
                argv.append(f"--account={job.account}")
            out = _run(*argv, str(script), str(job.duration))
            submitted.append(SlurmJob(job, out.strip().split(";")[0]))
        records = wait_all([s.slurm_id for s in submitted])
    except BaseException:
        alive = [s.slurm_id for s in submitted]
        if alive:
            subprocess.run(["scancel", *alive], check=False, timeout=60)
        raise
    outcomes = []
    for s in submitted:
        record = records[s.slurm_id]
        if record["job_state"] != "COMPLETED":
            raise RuntimeError(f"job {s.job.job_id} (Slurm {s.slurm_id}): {record['job_state']}")
        outcomes.append(
            Outcome(s.job, float(record["start_time"]) - t0, float(record["end_time"]) - t0)
        )
    return outcomes


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def wait_all(ids: list[str]) -> dict[str, dict[str, object]]:
    """Poll ``squeue --json`` (it lists ended jobs for MinJobAge; it ignores ``-j``, so the
    jobs are picked here) until each of ``ids`` has ended; their records."""
    wanted = set(ids)
    while True:
        listed = json.loads(_run("squeue", "--json", "-t", "all"))["jobs"]
        records = {str(j["job_id"]): j for j in listed if str(j["job_id"]) in wanted}
        if len(records) == len(wanted) and all(r["job_state"] in ENDED for r in records.values()):
            return records
        time.sleep(2)


# ------------------------------------------------------------------------------ the comparison
def sim_config(accounting: bool) -> SimConfig:
    if not accounting:
        return SimConfig(name="apportion sim", backfill="easy")
    scheduling = SchedulingConfig(
        weights=PriorityWeights(job=0, fair_share=WEIGHT_FAIRSHARE, age=WEIGHT_AGE),
        fair_share_half_life_seconds=HALF_LIFE_MINUTES * 60,
        max_age_seconds=MAX_AGE_MINUTES * 60,
    )
    return SimConfig(name="apportion sim", backfill="easy", scheduling=scheduling, shares=SHARES)


def overtaking(outcomes: list[Outcome]) -> int:
    """Jobs that started while a job submitted before them still waited."""
    starts = [(o.job.submit, math.inf if o.start is None else o.start) for o in outcomes]
    return sum(
        any(submit < later_submit and start > later_start + SAME_TIME for submit, start in starts)
        for later_submit, later_start in starts
    )


def mean_wait_by_account(outcomes: list[Outcome]) -> dict[str, float]:
    waits: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        waits[o.job.account].append(o.wait or 0.0)
    return {a: statistics.fmean(w) for a, w in sorted(waits.items())}


@dataclass(frozen=True)
class Agreement:
    median_start_gap: float
    largest_start_gap: float
    same_order: float  # part of job pairs started in the same order (ties agree with anything)


def agreement(slurm: list[Outcome], sim: list[Outcome]) -> Agreement:
    by_id = {o.job.job_id: o for o in sim}
    pairs = [(s, by_id[s.job.job_id]) for s in slurm]
    gaps = [abs(_start(a) - _start(b)) for a, b in pairs]
    agree = total = 0
    for (a1, b1), (a2, b2) in combinations(pairs, 2):
        slurm_gap = _start(a1) - _start(a2)
        sim_gap = _start(b1) - _start(b2)
        total += 1
        tied = abs(slurm_gap) <= SAME_TIME or abs(sim_gap) <= SAME_TIME
        agree += tied or (slurm_gap > 0) == (sim_gap > 0)
    return Agreement(statistics.median(gaps), max(gaps), agree / total if total else 1.0)


def _start(outcome: Outcome) -> float:
    return math.inf if outcome.start is None else outcome.start


def report(
    part: str, slurm: list[Outcome], sim: list[Outcome], config: SimConfig, *, detail: bool
) -> str:
    """The comparison's table (and, with ``detail``, each job's start on both sides)."""
    gpus = NODES * GPUS_PER_NODE
    rows: list[tuple[str, Summary, list[Outcome]]] = []
    for name, outcomes in (("Slurm 22.05", slurm), ("apportion simulate", sim)):
        rows.append((name, summarize(SimResult(config, outcomes, gpus, 0)), outcomes))
    accounts = sorted({o.job.account for o in slurm})
    lines = [
        f"#### {part}",
        "",
        "| run | mean wait | p95 wait | slowdown | GPU util | fairness | overtaking | "
        + " | ".join(f"wait {a}" for a in accounts)
        + " |",
        "|---" * (7 + len(accounts)) + "|",
    ]
    for name, s, outcomes in rows:
        by_account = mean_wait_by_account(outcomes)
        lines.append(
            f"| {name} | {s.mean_wait:.0f} s | {s.p95_wait:.0f} s | {s.bounded_slowdown:.2f} | "
            f"{s.utilisation:.1%} | {s.fairness:.3f} | {overtaking(outcomes)} | "
            + " | ".join(f"{by_account[a]:.0f} s" for a in accounts)
            + " |"
        )
    agreed = agreement(slurm, sim)
    lines += [
        "",
        f"Job by job: a start differs by {agreed.median_start_gap:.0f} s (median), "
        f"{agreed.largest_start_gap:.0f} s at most; {agreed.same_order:.1%} of job pairs "
        "started in the same order.",
    ]
    if detail:
        lines += ["", "| job | account | submit | GPUs | walltime | start (Slurm) | start (sim) |"]
        lines.append("|---" * 7 + "|")
        by_id = {o.job.job_id: o for o in sim}
        for o in sorted(slurm, key=lambda o: _start(o)):
            j, other = o.job, by_id[o.job.job_id]
            lines.append(
                f"| {j.job_id} | {j.account} | {j.submit:.0f} | {j.workers} × {j.gpus} | "
                f"{j.walltime or 0:.0f} | {round(_start(o))} | {round(_start(other))} |"
            )
    return "\n".join(lines)


def compare(part: str, trace: list[TraceJob], *, detail: bool) -> str:
    accounting = part == "fairshare"
    config = sim_config(accounting)
    sim = simulate(trace, synthetic_fleet(NODES, GPUS_PER_NODE), config).outcomes
    restart_slurm(accounting)
    with tempfile.TemporaryDirectory(prefix="apportion-compare-") as work:
        os.chmod(work, 0o755)
        started = time.monotonic()
        slurm = replay_on_slurm(trace, accounting, Path(work))
    print(f"{part}: Slurm replayed the trace in {time.monotonic() - started:.0f} s", flush=True)
    return report(part, slurm, sim, config, detail=detail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["backfill", "fairshare", "both"], default="both")
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--write", type=Path, help="write the trace as CSV and stop")
    parser.add_argument("--detail", action="store_true", help="also each job's start")
    args = parser.parse_args()
    if args.write is not None:
        write_trace(workload(), args.write)
        return 0
    if os.geteuid() != 0:
        print("runs as root: it starts Slurm (scripts/slurm_up.sh)", file=sys.stderr)
        return 2
    trace = read_trace(args.trace, gpus_per_node=GPUS_PER_NODE)
    print(f"{args.trace.name}: {len(trace)} jobs on {NODES} nodes × {GPUS_PER_NODE} GPUs")
    parts = ["backfill", "fairshare"] if args.part == "both" else [args.part]
    try:
        for part in parts:
            print(compare(part, trace, detail=args.detail), flush=True)
            print()
    finally:
        _run("bash", str(REPO / "scripts" / "slurm_down.sh"), timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
