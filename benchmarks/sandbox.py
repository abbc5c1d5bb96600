"""Sandboxed policy latency: the bwrap jail against unjailed workers, and the cost of one policy
per worker, in the same run (issues 9 and 21).

    .venv/bin/python benchmarks/sandbox.py           # 500 calls per mode, 3 repetitions
    .venv/bin/python benchmarks/sandbox.py --quick   # 100 calls, one repetition

Both modes use one :class:`~apportion.policies.sandbox.pool.SandboxPool` worker and the same
tiny seed-contract policy (it reads one cluster through the injected ``cluster_client``, so each
call also makes one client round trip over the worker's pipe). *unjailed* is the worker as it
was before the jail (``unsandboxed=True``: the server's user, a clean environment, rlimits);
*jailed* is the default (``bwrap``, the sandbox user, its own cgroups). Then, jailed, two policies
called in turn: with a worker each (``max_size=2``: the cost of one policy per worker is the
second worker), and sharing one place (``max_size=1``: every call gets a fresh worker, the worst
case of a full pool). Reported: the time to start a worker (``start()``), and per-call latency of
``evaluate`` (median, p95, p99) after 20 warm-up calls. Needs root, ``bwrap`` and the user
``apportion-sandbox`` (scripts/sandbox_up.sh).
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


async def measure(
    root: Path, *, jailed: bool, calls: int, policies: int = 1, max_size: int = 1
) -> tuple[float, list[float]]:
    """Start a pool of one worker (growing to ``max_size``); call ``policies`` policy URIs in
    turn; answer the start time and ``calls`` latencies (ms)."""
    pool = SandboxPool(size=1, max_size=max_size, code_roots=(root,), unsandboxed=not jailed)
    if jailed and pool.jail is None:
        sys.exit(f"no sandbox here: {pool.refusal}")
    started = time.perf_counter()
    await pool.start()
    start_ms = (time.perf_counter() - started) * 1000
    uris = [f"bench-{n}:1.0-x" for n in range(policies)]
    services = Services()
    latencies = []
    try:
        for n in range(20 + calls):
            call = SandboxCall(uris[n % policies], root / "bench", "r", {}, {}, {"inputs": {}}, {})
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
        modes = [
            ("unjailed (before)", False, 1, 1),
            ("jailed (bwrap)", True, 1, 1),
            ("jailed, 2 policies in turn, a worker each", True, 2, 2),
            ("jailed, 2 policies in turn, one place (a fresh worker per call)", True, 2, 1),
        ]
        for name, jailed, policies, max_size in modes:
            starts: list[float] = []
            latencies: list[float] = []
            for _ in range(repetitions):
                start_ms, got = await measure(
                    root, jailed=jailed, calls=calls, policies=policies, max_size=max_size
                )
                starts.append(start_ms)
                latencies += got
            print(
                f"| {name} | {statistics.median(starts):.0f} | {statistics.median(latencies):.2f}"
                f" | {quantile(latencies, 0.95):.2f} | {quantile(latencies, 0.99):.2f}"
                f" | {len(latencies)} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
