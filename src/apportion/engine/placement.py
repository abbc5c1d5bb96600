"""The vectorised placement kernels behind the built-in policies (CONTRACTS §3).

Called by :mod:`apportion.policies.builtins` (and by the scheduling layer for jobs) with the
fleet view, the candidate cluster ids and parsed requests. Pure decision logic: reads the fleet
under ``fleet.lock`` and never changes it. Each request costs a handful of O(nodes) numpy
passes; requests without a model or memory constraint use the fleet's per-node counters of
GPUs not held and never touch the 80k GPU rows.

Keys. Every choice is one ``argmin`` over an int64 key that packs the score and the tie-break:
``(primary * n_nodes + node_rank) * M + domain_ordinal`` where ``node_rank`` orders node rows by
``(cluster_id, node_id)`` and ``domain_ordinal`` orders a node's NVLink domains by their lowest
GPU index, so ties break by ``(cluster_id, node_id, gpu index)``.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.engine.rejections import Rejection, explain_rows, summarise
from apportion.engine.requests import GpuRequest
from apportion.engine.stage import (
    BOOL,
    I64,
    INF,
    M,
    Stage,
    Strategy,
    per_node,
    qualification,
    remember,
)
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey, Structure


@dataclass
class PlacementOutcome:
    """The result of :func:`place`. ``placements`` is None when infeasible. Rejections are
    computed only when asked (explain records, failures)."""

    placements: list[dict[str, Any]] | None
    candidate_nodes: int
    failed_request: int | None
    stage: Stage | None = field(default=None, repr=False)  # first, or failed, request
    first: Stage | None = field(default=None, repr=False)

    @cached_property
    def feasible_nodes(self) -> int:
        """Feasible candidate nodes of the first request (0 when the placement failed)."""
        if self.placements is None or self.first is None:
            return 0
        return int(self.first.feasible.size)

    @cached_property
    def top_scores(self) -> list[dict[str, Any]]:
        """Up to 5 best feasible nodes of the first request, best first:
        ``{"cluster_id", "node_id", "score"}`` with score = available GPUs left after
        placement (on the node; in the chosen domain for topology). Computed on first use."""
        return [] if self.first is None else _top(self.first)

    def rejections(self, limit: int = 50) -> list[Rejection]:
        """Rejected candidate nodes of the first (or failed) request, in (cluster, node) order."""
        return [] if self.stage is None else explain_rows(self.stage, limit)

    def rejection_summary(self) -> dict[str, int]:
        """Reason kind → number of rejected candidate nodes with that reason."""
        return {} if self.stage is None else summarise(self.stage)


def _evaluate(
    fleet: FleetView,
    s: Structure,
    cand: BOOL,
    r: GpuRequest,
    strategy: Strategy,
    excluded: set[int],
    taken: set[int],
    taken_res: dict[int, tuple[int, int]],
) -> Stage:
    excl = np.fromiter(excluded, dtype=np.int64, count=len(excluded)) if excluded else _NO_ROWS
    qual = qualification(s, r)
    gmask: BOOL | None = None
    if qual is None and r.gpu_memory_mb is None:
        avail = fleet.node_free.copy()
        free_excl = excl[~fleet.held[excl]]  # excluded rows the counters still count as free
        if free_excl.size:
            np.subtract.at(avail, s.gpu_node[free_excl], 1)
    else:
        gmask = ~fleet.held if qual is None else qual & ~fleet.held
        if r.gpu_memory_mb is not None:
            gmask &= ~(fleet.metric_free_mb < r.gpu_memory_mb)  # NaN: no live metric, ok
        gmask[excl] = False
        avail = per_node(s, gmask)
    ok = cand & (avail >= r.gpus)
    vcpus_left = memory_left = None
    if r.vcpus is not None:
        vcpus_left = _left(s.node_vcpus, taken_res, 0)
        ok &= vcpus_left >= r.vcpus
    if r.memory_mb is not None:
        memory_left = _left(s.node_memory_mb, taken_res, 1)
        ok &= memory_left >= r.memory_mb
    nvlink = r.gpus > 0 and (r.nvlink or strategy is Strategy.TOPOLOGY)
    dom_avail = node_dkey = None
    if nvlink:
        if gmask is None:
            dom_avail = fleet.domain_free.copy()
            if free_excl.size:
                dom = s.gpu_domain[free_excl]
                np.subtract.at(dom_avail, dom[dom >= 0], 1)
        else:
            dom_avail = s.domain_counter(gmask)
        node_dkey = _best_domains(s, dom_avail, r.gpus)
        ok &= node_dkey != INF
    filter_failed = _no_node(s)
    if r.node_filter is not None:
        filter_failed = np.zeros(s.n_nodes, dtype=bool)
        for row in np.flatnonzero(ok).tolist():
            cid = s.cluster_ids[int(s.node_cluster[row])]
            label = f'node "{s.node_ids[row]}" of cluster "{cid}"'
            if not r.node_filter(s.node_docs[row], label=label):
                filter_failed[row] = True
        ok &= ~filter_failed
    return Stage(
        fleet, s, r, strategy, cand, avail, gmask, vcpus_left, memory_left, nvlink,
        dom_avail, node_dkey, filter_failed, ok, frozenset(excluded), frozenset(taken),
    )  # fmt: skip


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _no_node(s: Structure) -> BOOL:
    """An all-false node mask, shared through the structure's cache (never mutate)."""
    hit = s.cache.get("no-node")
    if hit is None:
        hit = np.zeros(s.n_nodes, dtype=bool)
        remember(s, "no-node", hit)
    return hit


def _left(capacity: npt.NDArray[Any], taken: dict[int, tuple[int, int]], which: int) -> I64:
    left = capacity.astype(np.int64)
    for row, amounts in taken.items():
        left[row] -= amounts[which]
    return left


def _best_domains(s: Structure, dom_avail: Any, need: int) -> I64:
    """Per node, the key of its tightest NVLink domain with ``need`` available GPUs."""
    base = s.cache.get("domain-base")
    if base is None:
        base = s.node_rank[s.domain_node] * M + s.domain_ordinal
        s.cache["domain-base"] = base
    dkey = dom_avail.astype(np.int64)
    dkey -= need
    misfit = dkey < 0
    dkey *= s.n_nodes * M
    dkey += base
    dkey[misfit] = INF
    return s.min_per_node(dkey, INF)


def _pick_gpus(st: Stage, row: int) -> list[int]:
    """The lowest-index available GPU rows of the chosen node (or its chosen domain)."""
    s, fleet = st.s, st.fleet
    gs, ge = int(s.node_gpu_start[row]), int(s.node_gpu_end[row])
    if st.gmask is not None:
        local = st.gmask[gs:ge].copy()
    else:
        local = ~fleet.held[gs:ge]
        for g in st.excluded:
            if gs <= g < ge:
                local[g - gs] = False
    if st.nvlink:
        assert st.node_dkey is not None
        domain = int(s.node_domain_start[row]) + int(st.node_dkey[row] % M)
        local &= s.gpu_domain[gs:ge] == domain
    # a node has a handful of GPUs: plain Python beats numpy's per-call overhead here
    picked = [gs + i for i, free in enumerate(local.tolist()) if free][: st.request.gpus]
    assert len(picked) == st.request.gpus, "counts and masks disagree"
    return picked


def _top(st: Stage, k: int = 5) -> list[dict[str, Any]]:
    feasible, keys = st.feasible, st.keys
    if feasible.size > k:
        part = np.argpartition(keys, k - 1)[:k]
        feasible, keys = feasible[part], keys[part]
    order = np.argsort(keys, kind="stable")
    scores = st.score(keys)
    s = st.s
    return [
        {
            "cluster_id": s.cluster_ids[int(s.node_cluster[feasible[i]])],
            "node_id": s.node_ids[int(feasible[i])],
            "score": int(scores[i]),
        }
        for i in order
    ]


def _candidate_mask(s: Structure, candidates: Sequence[str]) -> tuple[BOOL, int]:
    """Node rows of the candidate clusters (cached per candidate list; never mutate)."""
    key = ("candidates", tuple(candidates))
    hit = s.cache.get(key)
    if hit is None:
        cmask = np.zeros(len(s.cluster_ids), dtype=bool)
        cmask[[s.cluster_pos[c] for c in candidates if c in s.cluster_pos]] = True
        cand = cmask[s.node_cluster]
        hit = (cand, int(np.count_nonzero(cand)))
        remember(s, key, hit)
    return hit


def place(
    fleet: FleetView,
    candidates: Sequence[str],
    requests: Sequence[GpuRequest],
    strategy: Strategy,
    *,
    unavailable: Set[GpuKey] = frozenset(),
) -> PlacementOutcome:
    """Place ``requests`` one after another in list order without overlap (a gang: all or
    nothing) on nodes of the ``candidates`` clusters (unknown ids are ignored).

    A GPU qualifies when its model (glob) and registry memory meet the request; it is available
    when it qualifies, is not held in the fleet, not in ``unavailable``, and — where a live
    metric exists (not NaN) — its free memory is at least ``gpu_memory_mb``. Node capacity
    (vcpus, memory) is reduced by what earlier requests of the gang took on the node.
    binpack: the feasible node with the fewest available GPUs left; spread: the most;
    topology: the tightest NVLink domain. ``nvlink: true`` (or topology) keeps a request inside
    one domain. Lowest-index GPUs are taken; ties by ``(cluster_id, node_id, gpu index)``.
    Returns a :class:`PlacementOutcome`; never raises for an infeasible request.
    """
    with fleet.lock:
        s = fleet.structure
        cand, candidate_nodes = _candidate_mask(s, candidates)
        all_candidates = candidate_nodes == s.n_nodes
        rows = (s.gpu_row(k) for k in unavailable)
        excluded = {r for r in rows if r is not None}
        taken: set[int] = set()
        taken_res: dict[int, tuple[int, int]] = {}
        placements: list[dict[str, Any]] = []
        first: Stage | None = None
        for i, r in enumerate(requests):
            st = _evaluate(fleet, s, cand, r, strategy, excluded, taken, taken_res)
            if i == 0:
                first = st
            row = st.choose(all_candidates)
            if row is None:
                return PlacementOutcome(None, candidate_nodes, i, st, first)
            gpu_rows = _pick_gpus(st, row)
            excluded.update(gpu_rows)
            taken.update(gpu_rows)
            vc, mem = taken_res.get(row, (0, 0))
            taken_res[row] = (vc + (r.vcpus or 0), mem + (r.memory_mb or 0))
            placements.append(
                {
                    "cluster_id": s.cluster_ids[int(s.node_cluster[row])],
                    "node_id": s.node_ids[row],
                    "gpus": [str(int(s.gpu_index[g])) for g in gpu_rows],
                }
            )
        return PlacementOutcome(placements, candidate_nodes, None, first, first)
