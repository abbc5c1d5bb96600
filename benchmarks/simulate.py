"""The simulator's speed and a trace for docs/scheduling.md (issue 10, item 7).

    .venv/bin/python benchmarks/simulate.py                      # 10,000 jobs, 1,000 nodes
    .venv/bin/python benchmarks/simulate.py --jobs 600 --nodes 16 --write examples/simulate/gpu-teams.csv

Builds a GPU workload (three teams; the vision team submits most; sizes of 1-8 GPUs per worker
and up to 8 workers; log-normal run times; walltimes 1-3 × the run time), replays it with
``apportion.sim`` under the configurations in ``examples/simulate/``, and reports each
configuration's wall-clock time (median of ``--runs``) and figures. ``--write`` keeps the
workload as a CSV trace instead of benchmarking.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
from pathlib import Path

from apportion.sim.engine import read_config, simulate, synthetic_fleet
from apportion.sim.report import summarize, table_row
from apportion.sim.trace import TraceJob

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "simulate"


def workload(jobs: int, nodes: int, seed: int = 7) -> list[TraceJob]:
    """A saturating GPU workload for a fleet of ``nodes`` nodes of 8 GPUs."""
    rng = random.Random(seed)
    mean_gap = 2300.0 / nodes  # about twice what the fleet can run: a line builds up
    out, now = [], 0.0
    for index in range(jobs):
        now += rng.expovariate(1 / mean_gap)
        gpus = rng.choice([1, 2, 4, 8])
        workers = rng.choice([1, 1, 1, 2, 4, 8]) if gpus == 8 else 1
        duration = min(rng.lognormvariate(8, 1.0), 4 * 86400)
        team = rng.choices(["vision", "nlp", "speech"], weights=[6, 3, 1])[0]
        walltime = round(duration * rng.uniform(1.0, 3.0))
        out.append(
            TraceJob(str(index), round(now, 1), team, workers, gpus, round(duration, 1), walltime)
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--write", type=Path, help="write the workload as a CSV trace and stop")
    args = parser.parse_args()
    jobs = workload(args.jobs, args.nodes)
    if args.write is not None:
        with args.write.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(
                ["submit_time", "account", "workers", "gpus_per_worker", "duration", "walltime"]
            )
            for j in jobs:
                writer.writerow([j.submit, j.account, j.workers, j.gpus, j.duration, j.walltime])
        return 0
    fleet = synthetic_fleet(args.nodes, 8)
    print(f"{len(jobs)} jobs on {args.nodes} nodes × 8 GPUs")
    print(
        "| config | median s | runs | jobs | mean wait | p95 wait | slowdown | GPU util | fairness | backfilled | preempted |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ("fifo", "backfill", "fairshare"):
        config = read_config(CONFIGS / f"{name}.toml")
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = simulate(jobs, fleet, config)
            seconds.append(time.perf_counter() - started)
        row = table_row(summarize(result))
        print(
            f"| {row[0]} | {statistics.median(seconds):.1f} | {args.runs} | "
            + " | ".join(row[1:])
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
