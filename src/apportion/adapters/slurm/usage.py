"""A Slurm cluster's live use, as a metrics document (CONTRACTS §4: collectors include Slurm).

Every ``interval`` seconds :class:`SlurmUsageCollector` asks Slurm (``sinfo --json``) for each
registered Slurm cluster's nodes and pushes a metrics document: CPU load, free memory and how
many GPUs Slurm has allocated on each node (``gpu.count``, ``gpusInUse``). Slurm 22.05 does not
say *which* GPU indices are in use, so no per-GPU entries are written: placement keeps using the
engine's own holds for that, and the counts are there for people and dashboards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from apportion.adapters.slurm.adapter import SlurmAdapter
from apportion.adapters.slurm.parse_nodes import SlurmNode, parse_gpu_gres
from apportion.registry.service import Registry
from apportion.timefmt import iso_utc

log = logging.getLogger(__name__)

Push = Callable[[str, dict[str, Any]], Awaitable[Any]]


def usage_document(cluster: dict[str, Any], nodes: Sequence[SlurmNode]) -> dict[str, Any]:
    """The metrics document of ``cluster`` from Slurm's view of its nodes."""
    by_name = {n.name: n for n in nodes}
    entries = []
    for node in cluster.get("nodes", {}).get("nodeData", []):
        state = by_name.get(node["id"])
        if state is None:
            continue
        total = sum(count for _, count in parse_gpu_gres(state.gres))
        used = sum(count for _, count in parse_gpu_gres(state.gres_used))
        entry: dict[str, Any] = {
            "id": node["id"],
            "state": state.state,
            "gpu": {"count": total, "gpusInUse": used},
        }
        if state.cpu_load is not None:
            entry["vcpu"] = {"load1m": state.cpu_load}
        if state.free_memory_mb is not None and state.memory_mb:
            entry["memory"] = {
                "freeMem": state.free_memory_mb,
                "usedMem": max(state.memory_mb - state.free_memory_mb, 0),
            }
        entries.append(entry)
    return {
        "clusterId": cluster["id"],
        "timestamp": iso_utc(time.time()),
        "source": "slurm",
        "nodes": entries,
    }


class SlurmUsageCollector:
    """Pushes the use of every Slurm cluster of the registry, periodically."""

    def __init__(
        self, registry: Registry, adapter: SlurmAdapter, *, interval: float = 15.0
    ) -> None:
        self._registry = registry
        self._adapter = adapter
        self._interval = interval

    def slurm_clusters(self) -> list[dict[str, Any]]:
        return [
            doc
            for doc in self._registry.list_clusters()
            if (doc.get("config") or {}).get("scheduler", {}).get("type") == "slurm"
        ]

    async def collect(self) -> int:
        """One round; returns how many clusters were updated."""
        clusters = self.slurm_clusters()
        if not clusters:
            return 0
        nodes = await self._adapter.node_states()
        for cluster in clusters:
            await self._registry.put_metrics(cluster["id"], usage_document(cluster, nodes))
        return len(clusters)

    async def run(self) -> None:
        while True:
            try:
                await self.collect()
            except Exception as exc:  # Slurm down for a moment is not fatal
                log.warning("collecting Slurm usage failed: %s", exc)
            await asyncio.sleep(self._interval)
