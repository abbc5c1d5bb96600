"""The vectorised placement kernels behind the built-in policies (CONTRACTS §3).

Called by the built-in policies (:mod:`apportion.policies.builtins`, for allocations and jobs)
with the fleet view, the candidate cluster ids and parsed requests; answers with an
:data:`~apportion.engine.decisions.Outcome`. Pure decision logic: reads the fleet under
``fleet.lock`` and never changes it. Each request costs a handful of O(nodes) numpy
passes; requests without a model or memory constraint use the fleet's per-node counters of
GPUs not held and never touch the 80k GPU rows.

Keys. Every choice is one ``argmin`` over an int64 key that packs the score and the tie-break:
``(primary * n_nodes + node_rank) * M + domain_ordinal`` where ``node_rank`` orders node rows by
``(cluster_id, node_id)`` and ``domain_ordinal`` orders a node's NVLink domains by their lowest
GPU index, so ties break by ``(cluster_id, node_id, gpu index)``.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.engine.decisions import Outcome, Placed, Placement, Reason, Unplaceable
from apportion.engine.explain import Evidence
from apportion.engine.requests import GpuRequest
from apportion.engine.stage import (
    BOOL,
    I64,
    INF,
    M,
    Stage,
    Step,
    Strategy,
    model_mask,
    per_node,
    qualification,
    remember,
)
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey, Structure


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
    """One request over every node row. Each filter step appends its :class:`Step` (reason and
    the rows that passed) as it narrows ``ok``: the explanation of a rejection is read from
    these steps, never worked out again."""
    steps: list[Step] = []
    excl = np.fromiter(excluded, dtype=np.int64, count=len(excluded)) if excluded else _NO_ROWS
    qual = qualification(s, r)
    gmask = free = metric_low = None
    if qual is None:  # no model or memory condition: the fleet's per-node counters
        avail = fleet.node_free.copy()
        free_excl = excl[~fleet.held[excl]]  # excluded rows the counters still count as free
        if free_excl.size:
            np.subtract.at(avail, s.gpu_node[free_excl], 1)
    else:
        if r.gpu_model is not None:
            steps.append(Step(Reason.GPU_MODEL, model_mask(s, r.gpu_model)))  # cached
        if r.gpu_memory_mb is not None:
            steps.append(Step(Reason.GPU_MEMORY, qual))
        free = ~fleet.held
        gmask = qual & free
        if r.gpu_memory_mb is not None:
            metric_low = fleet.metric_free_mb < r.gpu_memory_mb  # NaN: no live metric, ok
            gmask &= ~metric_low
        gmask[excl] = False
        avail = per_node(s, gmask)
    enough = avail >= r.gpus
    steps.append(Step(Reason.INSUFFICIENT_GPUS, enough))
    ok = cand & enough
    vcpus_left = memory_left = None
    if r.vcpus is not None:
        vcpus_left = _left(s.node_vcpus, taken_res, 0)
        fits = vcpus_left >= r.vcpus
        steps.append(Step(Reason.VCPUS, fits))
        ok &= fits
    if r.memory_mb is not None:
        memory_left = _left(s.node_memory_mb, taken_res, 1)
        fits = memory_left >= r.memory_mb
        steps.append(Step(Reason.MEMORY, fits))
        ok &= fits
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
        fits = node_dkey != INF
        steps.append(Step(Reason.NVLINK, fits))
        ok &= fits
    if r.node_filter is not None:
        matches = np.ones(s.n_nodes, dtype=bool)
        for row in np.flatnonzero(ok).tolist():
            cid = s.cluster_ids[int(s.node_cluster[row])]
            label = f'node "{s.node_ids[row]}" of cluster "{cid}"'
            if not r.node_filter(s.node_docs[row], label=label):
                matches[row] = False
        steps.append(Step(Reason.NODE_FILTER, matches))
        ok &= matches
    return Stage(
        fleet, s, r, strategy, cand, avail, gmask, vcpus_left, memory_left, nvlink,
        dom_avail, node_dkey, steps, ok, frozenset(excluded), frozenset(taken), free, metric_low,
    )  # fmt: skip


_NO_ROWS = np.zeros(0, dtype=np.int64)


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


def candidate_mask(s: Structure, candidates: Sequence[str]) -> tuple[BOOL, int]:
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
) -> Outcome:
    """Place ``requests`` one after another in list order without overlap (a gang: all or
    nothing) on nodes of the ``candidates`` clusters (unknown ids are ignored).

    A GPU qualifies when its model (glob) and registry memory meet the request; it is available
    when it qualifies, is not held in the fleet, not in ``unavailable``, and — where a live
    metric exists (not NaN) — its free memory is at least ``gpu_memory_mb``. Node capacity
    (vcpus, memory) is reduced by what earlier requests of the gang took on the node.
    binpack: the feasible node with the fewest available GPUs left; spread: the most;
    topology: the tightest NVLink domain. ``nvlink: true`` (or topology) keeps a request inside
    one domain. Lowest-index GPUs are taken; ties by ``(cluster_id, node_id, gpu index)``.
    Returns :class:`Placed` (one placement per request), or :class:`Unplaceable` naming the
    request that found no node; both carry the :class:`Evidence` (what the filter steps
    recorded), rendered only when read. Never raises for an infeasible request.
    """
    with fleet.lock:
        s = fleet.structure
        cand, candidate_nodes = candidate_mask(s, candidates)
        all_candidates = candidate_nodes == s.n_nodes
        rows = (s.gpu_row(k) for k in unavailable)
        excluded = {r for r in rows if r is not None}
        taken: set[int] = set()
        taken_res: dict[int, tuple[int, int]] = {}
        placements: list[Placement] = []
        first: Stage | None = None
        for i, r in enumerate(requests):
            st = _evaluate(fleet, s, cand, r, strategy, excluded, taken, taken_res)
            if i == 0:
                first = st
            row = st.choose(all_candidates)
            if row is None:
                return Unplaceable(i, Evidence(candidate_nodes, tuple(requests), st, first, False))
            gpu_rows = _pick_gpus(st, row)
            excluded.update(gpu_rows)
            taken.update(gpu_rows)
            vc, mem = taken_res.get(row, (0, 0))
            taken_res[row] = (vc + (r.vcpus or 0), mem + (r.memory_mb or 0))
            placements.append(
                Placement(
                    s.cluster_ids[int(s.node_cluster[row])],
                    s.node_ids[row],
                    tuple([str(int(s.gpu_index[g])) for g in gpu_rows]),
                )
            )
        return Placed(
            tuple(placements), Evidence(candidate_nodes, tuple(requests), first, first, True)
        )
