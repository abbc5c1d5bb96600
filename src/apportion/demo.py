"""The demo fleet: three clusters, 44 nodes of 8 GPUs, mixed models, NVLink domains, live metrics.

``demo_clusters()`` builds the documents; ``SyntheticMetrics`` pushes a fresh
metrics document for every cluster every few seconds (a slow random walk of
utilisation and free memory, GPUs held by the engine shown as busy), the way a
real collector would.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apportion.registry.fleet import FleetView
from apportion.timefmt import iso_utc

# (cluster id, region, nodes, model, GPU memory MB, NVLink domains, vcpus, memory MB)
FLEET_SPEC: tuple[tuple[str, str, int, str, int, list[list[int]], int, int], ...] = (
    ("dgx-east", "us-east-1", 16, "H100", 81920, [[0, 1, 2, 3], [4, 5, 6, 7]], 112, 2_097_152),
    ("a100-west", "us-west-2", 16, "A100", 40960, [[0, 1, 2, 3, 4, 5, 6, 7]], 64, 1_048_576),
    ("mixed-lab", "eu-central-1", 12, "L40S", 49152, [], 48, 524_288),
)


def _node(
    prefix: str, index: int, model: str, memory: int, domains: list[list[int]], vcpus: int, ram: int
) -> dict[str, Any]:
    if prefix == "mixed-lab" and index % 2:  # every other lab node is an older V100 box
        model, memory, domains = "V100", 32768, []
    node: dict[str, Any] = {
        "id": f"{prefix}-n{index:02d}",
        "gpus": {
            "count": 8,
            "gpus": [{"modelName": model, "memory": memory}],
            "features": ["nvlink"] if domains else [],
        },
        "vcpus": {"count": vcpus},
        "memory": ram,
        "labels": {"rack": f"r{index // 4 + 1}", "model": model},
    }
    if domains:
        node["gpus"]["topology"] = {"nvlinkDomains": domains}
    return node


def demo_clusters() -> list[dict[str, Any]]:
    """Cluster documents of the demo fleet (validated by the registry when loaded)."""
    clusters = []
    for cid, region, count, model, memory, domains, vcpus, ram in FLEET_SPEC:
        nodes = [_node(cid, i, model, memory, domains, vcpus, ram) for i in range(count)]
        clusters.append(
            {
                "id": cid,
                "regionId": region,
                "status": "live",
                "nodes": {"count": count, "nodeData": nodes},
                "config": {"scheduler": {"type": "local"}},
                "tags": ["gpu", "demo"],
                "clusterMetadata": {"name": cid, "owner": "demo"},
                "reputation": 0.9,
            }
        )
    return clusters


class SyntheticMetrics:
    """Pushes live-looking metrics for the demo clusters."""

    def __init__(
        self,
        clusters: list[dict[str, Any]],
        fleet: FleetView,
        push: Callable[[str, dict[str, Any]], Awaitable[Any]],
        *,
        interval: float = 3.0,
        seed: int = 7,
    ) -> None:
        self._clusters = clusters
        self._fleet = fleet
        self._push = push
        self._interval = interval
        self._random = random.Random(seed)  # noqa: S311 - synthetic metrics, not security
        self._util: dict[tuple[str, str, int], float] = {}

    def document(self, cluster: dict[str, Any]) -> dict[str, Any]:
        """One metrics document for ``cluster`` (CONTRACTS §4)."""
        nodes = []
        for node in cluster["nodes"]["nodeData"]:
            total = node["gpus"]["gpus"][0]["memory"]
            gpus = []
            for index in range(node["gpus"]["count"]):
                key = (cluster["id"], node["id"], index)
                held = self._fleet.is_held((cluster["id"], node["id"], str(index)))
                util = self._util.get(key, self._random.uniform(0, 30))
                util = min(100.0, max(0.0, util + self._random.uniform(-8, 8)))
                if held:
                    util = max(util, 70.0)
                self._util[key] = util
                used = round(total * (0.9 if held else util / 200))
                gpus.append(
                    {
                        "gpu_id": index,
                        "usedMem": used,
                        "freeMem": total - used,
                        "totalMem": total,
                        "memUtilization": round(100 * used / total, 1),
                        "cudaUtilization": round(util, 1),
                        "powerUtilization": round(60 + 3 * util, 1),
                        "temperature": round(30 + util / 2, 1),
                    }
                )
            nodes.append(
                {
                    "id": node["id"],
                    "memory": {
                        "freeMem": node["memory"] // 2,
                        "usedMem": node["memory"] // 2,
                        "averageUtil": 50.0,
                    },
                    "vcpu": {
                        "load1m": round(self._random.uniform(0, 8), 2),
                        "load5m": 2.0,
                        "load15m": 2.0,
                    },
                    "gpus": gpus,
                }
            )
        return {
            "clusterId": cluster["id"],
            "timestamp": iso_utc(time.time()),
            "nodes": nodes,
        }

    async def run(self) -> None:
        """Push every ``interval`` seconds until cancelled."""
        while True:
            for cluster in self._clusters:
                await self._push(cluster["id"], self.document(cluster))
            await asyncio.sleep(self._interval)


DEMO_QUEUES: tuple[dict[str, Any], ...] = (
    {
        "name": "training",
        "description": "multi-GPU training, packed onto as few nodes as possible",
        "policy_rule_uri": "binpack:1.0-stable",
        "maximum_allowed_worker_instances": 8,
    },
    {
        "name": "inference",
        "description": "single-GPU services, spread across nodes",
        "policy_rule_uri": "spread:1.0-stable",
        "maximum_allowed_worker_instances": 12,
    },
)

_DEMO_SCRIPT = (
    "import os, sys, time\n"
    "steps = int(sys.argv[1])\n"
    "print('worker', os.environ['APPORTION_WORKER_INDEX'], 'of', os.environ['APPORTION_NUM_WORKERS'],"
    " 'on GPUs', os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
    "for step in range(steps):\n"
    "    time.sleep(0.5)\n"
    "    print('step', step + 1, 'of', steps, flush=True)\n"
)


class DemoJobs:
    """Submits a stream of small real jobs (Python processes) to the demo queues."""

    def __init__(
        self,
        submit: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        python: str,
        interval: float = 2.0,
        seed: int = 11,
    ) -> None:
        self._submit = submit
        self._python = python
        self._interval = interval
        self._random = random.Random(seed)  # noqa: S311 - demo workload, not security
        self.submitted = 0

    def next_job(self) -> dict[str, Any]:
        """The body of the next ``POST /jobs/submit``."""
        training = self._random.random() < 0.5
        steps = self._random.randint(4, 16)
        config: dict[str, Any] = {
            "name": f"{'train' if training else 'serve'}-{self.submitted + 1:04d}",
            "queue": "training" if training else "inference",
            "command": [self._python, "-c", _DEMO_SCRIPT, str(steps)],
            "resources": {"gpus": self._random.choice((2, 4, 8)) if training else 1},
            "replica_count": self._random.choice((1, 2)) if training else 1,
            "labels": {"demo": "true"},
        }
        return {"config": config, "priority": self._random.choice((0, 0, 0, 5, -1))}

    async def run(self) -> None:
        """Submit a job every ``interval`` seconds until cancelled."""
        while True:
            await self._submit(self.next_job())
            self.submitted += 1
            await asyncio.sleep(self._interval)
