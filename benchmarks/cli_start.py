"""How long the ``apportion`` command takes to start, against a bare interpreter (issue 14).

    .venv/bin/python benchmarks/cli_start.py            # 15 runs of each command
    .venv/bin/python benchmarks/cli_start.py --runs 5

Each command is run as a user runs it — a new process of the venv's ``apportion`` script —
and timed from spawn to exit. ``jobs`` asks a real server (``serve_fleet.py``, started here
with 8 nodes and ended by PID), so it includes one REST round trip. References, same run: the
bare interpreter (``python -c pass``) and the interpreter importing only ``aiohttp`` (what
any REST client pays). Reported: the median and the fastest run of each, in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from allocation import ADMIN_KEY, start, stop

APPORTION = Path(sys.executable).parent / "apportion"


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall-clock ms of ``runs`` runs of ``argv`` (each must exit 0)."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    server, ready = start("serve_fleet.py", "--nodes", "8", env={"APPORTION_ADMIN_KEY": ADMIN_KEY})
    try:
        env = {
            **os.environ,
            "APPORTION_URL": ready["url"],
            "APPORTION_API_KEY": ADMIN_KEY,
            "APPORTION_CREDENTIALS": os.devnull,
        }
        cases = [
            ("python -c pass (reference)", [sys.executable, "-c", "pass"]),
            ("python -c 'import aiohttp' (reference)", [sys.executable, "-c", "import aiohttp"]),
            ("apportion --version", [str(APPORTION), "--version"]),
            ("apportion --help", [str(APPORTION), "--help"]),
            ("apportion jobs", [str(APPORTION), "jobs"]),
        ]
        print("| command | median ms | fastest ms | runs |")
        print("|---|---|---|---|")
        for name, argv in cases:
            samples = timed(argv, env, args.runs)
            print(
                f"| {name} | {statistics.median(samples):.0f} | {min(samples):.0f}"
                f" | {len(samples)} |"
            )
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
