"""Sandboxed policy latency: the bwrap jail against unjailed workers, in the same run (issue 9).

    .venv/bin/python benchmarks/sandbox.py           # 500 calls per mode, 3 repetitions
    .venv/bin/python benchmarks/sandbox.py --quick   # 100 calls, one repetition

Both modes use one :class:`~apportion.policies.sandbox.pool.SandboxPool` worker and the same
tiny seed-contract policy (it reads one cluster through the injected ``cluster_client``, so each
call also makes one client round trip over the worker's pipe). *unjailed* is the worker as it
was before the jail (``unsandboxed=True``: the server's user, a clean environment, rlimits);
*jailed* is the default (``bwrap``, the sandbox user, its own cgroups). Reported: the time to
start a worker (``start()``), and per-call latency of ``evaluate`` (median, p95, p99) after 20
warm-up calls. Needs root, ``bwrap`` and the user ``apportion-sandbox`` (scripts/sandbox_up.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apportion.policies.sandbox.pool import SandboxCall, SandboxPool

POLICY = """
class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.client = settings["cluster_client"]

    def eval(self, parameters, input_data, context):
        ok, cluster = self.client.read_cluster("c1")
        return [{"cluster_id": cluster["id"], "node_id": "n1", "gpus": ["0"]}]
"""


class Services:
    """Answers the one client call the policy makes."""

    def read_cluster(self, cluster_id: str) -> tuple[bool, Any]:
        return True, {"id": cluster_id}

    def execute_query(self, query: Any) -> tuple[bool, Any]:
        return True, []

    def get_cluster_metrics(self, cluster_id: str) -> Any:
        raise LookupError(cluster_id)

    def query_cluster_metrics(self, query: Any) -> list[Any]:
        return []


async def measure(root: Path, *, jailed: bool, calls: int) -> tuple[float, list[float]]:
    """Start a one-worker pool; answer its start time and ``calls`` latencies (ms)."""
    pool = SandboxPool(size=1, code_roots=(root,), unsandboxed=not jailed)
    if jailed and pool.jail is None:
        sys.exit(f"no sandbox here: {pool.refusal}")
    started = time.perf_counter()
    await pool.start()
    start_ms = (time.perf_counter() - started) * 1000
    call = SandboxCall("bench:1.0-x", root / "bench", "r", {}, {}, {"inputs": {}}, {})
    services = Services()
    latencies = []
    try:
        for n in range(20 + calls):
            before = time.perf_counter()
            await pool.evaluate(call, services)
            if n >= 20:
                latencies.append((time.perf_counter() - before) * 1000)
    finally:
        await pool.close()
    return start_ms, latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_policy(root: Path) -> None:
    (root / "bench" / "code").mkdir(parents=True)
    (root / "bench" / "code" / "function.py").write_text(POLICY)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 calls, one repetition")
    args = parser.parse_args()
    calls, repetitions = (100, 1) if args.quick else (500, 3)
    with tempfile.TemporaryDirectory(prefix="apportion-bench-") as tmp:
        root = Path(tmp)
        write_policy(root)
        print("| mode | worker start ms | median ms | p95 ms | p99 ms | calls |")
        print("|---|---|---|---|---|---|")
        for jailed in (False, True):
            starts: list[float] = []
            latencies: list[float] = []
            for _ in range(repetitions):
                start_ms, got = await measure(root, jailed=jailed, calls=calls)
                starts.append(start_ms)
                latencies += got
            name = "jailed (bwrap)" if jailed else "unjailed (before)"
            print(
                f"| {name} | {statistics.median(starts):.0f} | {statistics.median(latencies):.2f}"
                f" | {quantile(latencies, 0.95):.2f} | {quantile(latencies, 0.99):.2f}"
                f" | {len(latencies)} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
