"""Whether a gang could be placed: the fleet's hardware with every GPU free, or with some.

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
from apportion.registry.fleet_structure import BOOL, I64, Structure


@dataclass(frozen=True)
class Capacity:
    """The most workers of one request a single candidate cluster could ever take (all its
    GPUs free, capped at what was asked), and that cluster (``None`` when none could take
    one; of equals, the first by id)."""

    workers: int
    cluster_id: str | None


def gang_capacity(
    s: Structure, candidates: Sequence[str], r: GpuRequest, wanted: int, free: BOOL | None = None
) -> Capacity:
    """How many workers asking ``r`` each the best of the ``candidates`` clusters could hold
    at once, counting each node's qualifying GPUs (those of ``free`` only, when given), vCPUs
    and memory (up to ``wanted``)."""
    per_node_workers = _workers_per_node(s, candidates, r, wanted, free)
    if per_node_workers is None:
        return Capacity(0, None)
    by_cluster = np.bincount(s.node_cluster, weights=per_node_workers, minlength=len(s.cluster_ids))
    most = int(by_cluster.max())
    if most == 0:
        return Capacity(0, None)
    best = min(cid for cid, n in zip(s.cluster_ids, by_cluster.tolist(), strict=True) if n == most)
    return Capacity(min(most, wanted), best)


def gang_rows(
    s: Structure, candidates: Sequence[str], r: GpuRequest, wanted: int, free: BOOL
) -> I64 | None:
    """The GPU rows a gang of ``wanted`` workers asking ``r`` each would take among the
    ``free`` GPUs — in the first cluster by id that holds them all, node after node in id
    order, the lowest rows first — or None when no candidate cluster can. A deterministic
    stand-in for a policy's choice, for estimates (jobs/backfill.py)."""
    per_node_workers = _workers_per_node(s, candidates, r, wanted, free)
    if per_node_workers is None:
        return None
    by_cluster = np.bincount(s.node_cluster, weights=per_node_workers, minlength=len(s.cluster_ids))
    fitting = [
        cid for cid, n in zip(s.cluster_ids, by_cluster.tolist(), strict=True) if n >= wanted
    ]
    if not fitting:
        return None
    ci = s.cluster_pos[min(fitting)]
    lo, hi = int(s.cluster_node_start[ci]), int(s.cluster_node_start[ci + 1])
    usable = free if (qual := qualification(s, r)) is None else free & qual
    rows: list[int] = []
    left = wanted
    for node in sorted(range(lo, hi), key=lambda n: int(s.node_rank[n])):
        take = min(int(per_node_workers[node]), left)
        if take <= 0:
            continue
        if r.gpus > 0:
            start, end = int(s.node_gpu_start[node]), int(s.node_gpu_end[node])
            on_node = np.flatnonzero(usable[start:end])[: take * r.gpus] + start
            rows.extend(on_node.tolist())
        left -= take
        if left == 0:
            break
    return np.asarray(rows, dtype=np.int64)


def _workers_per_node(
    s: Structure, candidates: Sequence[str], r: GpuRequest, wanted: int, free: BOOL | None
) -> I64 | None:
    """Per node row: how many workers asking ``r`` it could take (0 off the candidates);
    None for an empty fleet."""
    if not s.cluster_ids:
        return None
    cand, _ = candidate_mask(s, candidates)
    qual = qualification(s, r)
    usable = free if qual is None else (qual if free is None else free & qual)
    gpus = s.node_gpu_count if usable is None else per_node(s, usable)
    per_node_workers = np.full(s.n_nodes, wanted, dtype=np.int64)
    if r.gpus > 0:
        per_node_workers = np.minimum(per_node_workers, gpus // r.gpus)
    if r.vcpus is not None:
        per_node_workers = np.minimum(per_node_workers, s.node_vcpus // r.vcpus)
    if r.memory_mb is not None:
        per_node_workers = np.minimum(per_node_workers, s.node_memory_mb // r.memory_mb)
    per_node_workers[~cand] = 0
    return per_node_workers
