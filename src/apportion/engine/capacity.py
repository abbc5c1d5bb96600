"""Whether a gang could ever be placed: the fleet's hardware with every GPU free.

Used at submit (:meth:`JobService.submit <apportion.jobs.service.JobService.submit>`) to refuse
a job that could never start, as Slurm refuses "Requested node configuration is not available":
a GPU model no candidate cluster has, or more GPUs than one cluster holds. Holds, live metrics,
NVLink domains and node filters are not considered: they change, and a job they block waits
with their reason. Pure: reads a :class:`Structure`, never changes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apportion.engine.placement import candidate_mask
from apportion.engine.requests import GpuRequest
from apportion.engine.stage import per_node, qualification
from apportion.registry.fleet_structure import Structure


@dataclass(frozen=True)
class Capacity:
    """The most workers of one request a single candidate cluster could ever take (all its
    GPUs free, capped at what was asked), and that cluster (``None`` when none could take
    one; of equals, the first by id)."""

    workers: int
    cluster_id: str | None


def gang_capacity(s: Structure, candidates: Sequence[str], r: GpuRequest, wanted: int) -> Capacity:
    """How many workers asking ``r`` each the best of the ``candidates`` clusters could hold
    at once, counting each node's qualifying GPUs, vCPUs and memory (up to ``wanted``)."""
    cand, _ = candidate_mask(s, candidates)
    if not s.cluster_ids:
        return Capacity(0, None)
    qual = qualification(s, r)
    gpus = s.node_gpu_count if qual is None else per_node(s, qual)
    per_node_workers = np.full(s.n_nodes, wanted, dtype=np.int64)
    if r.gpus > 0:
        per_node_workers = np.minimum(per_node_workers, gpus // r.gpus)
    if r.vcpus is not None:
        per_node_workers = np.minimum(per_node_workers, s.node_vcpus // r.vcpus)
    if r.memory_mb is not None:
        per_node_workers = np.minimum(per_node_workers, s.node_memory_mb // r.memory_mb)
    per_node_workers[~cand] = 0
    by_cluster = np.bincount(s.node_cluster, weights=per_node_workers, minlength=len(s.cluster_ids))
    most = int(by_cluster.max())
    if most == 0:
        return Capacity(0, None)
    best = min(cid for cid, n in zip(s.cluster_ids, by_cluster.tolist(), strict=True) if n == most)
    return Capacity(min(most, wanted), best)
