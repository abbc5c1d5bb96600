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
from enum import StrEnum
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.engine.requests import GpuRequest
from apportion.registry.fleet import FleetView, GpuKey, Structure

BOOL = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
M = 1 << 16  # bound on GPUs per node, GPUs left and domains per node
INF = np.iinfo(np.int64).max
_CACHE_LIMIT = 256


class Strategy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"
    TOPOLOGY = "topology"


@dataclass(frozen=True)
class Rejection:
    """Why one candidate node could not take a request: human texts and their kind words
    (``node_filter``, ``gpu_model``, ``gpu_memory``, ``insufficient_gpus``, ``vcpus``,
    ``memory``, ``nvlink``), in the same order."""

    cluster_id: str
    node_id: str
    reasons: tuple[str, ...]
    kinds: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "reasons": list(self.reasons),
            "kinds": list(self.kinds),
        }


@dataclass
class Stage:
    """One request evaluated over every node row (fresh arrays, a snapshot of the decision)."""

    fleet: FleetView
    s: Structure
    request: GpuRequest
    strategy: Strategy
    cand: BOOL
    avail: npt.NDArray[np.int32]  # available GPUs per node
    gmask: BOOL | None  # available GPU rows (None on the counter path)
    vcpus_left: I64 | None
    memory_left: I64 | None
    nvlink: bool  # the request needs one NVLink domain
    dom_avail: npt.NDArray[np.int32] | None
    node_dkey: I64 | None  # best domain key per node (INF: no domain fits)
    filter_failed: BOOL
    ok: BOOL
    excluded: frozenset[int]
    taken: frozenset[int]
    feasible: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    keys: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def key(self) -> I64:
        if self.node_dkey is not None and self.strategy is Strategy.TOPOLOGY:
            return self.node_dkey
        left = self.avail.astype(np.int64) - self.request.gpus
        primary = (M - left) if self.strategy is Strategy.SPREAD else left
        return (primary * self.s.n_nodes + self.s.node_rank) * M

    def score(self, key: I64) -> I64:
        """GPUs left after placement (node, or domain for topology), from a key."""
        primary = key // max(1, self.s.n_nodes * M)
        return (M - primary) if self.strategy is Strategy.SPREAD else primary


@dataclass
class PlacementOutcome:
    """The result of :func:`place`. ``placements`` is None when infeasible. Rejections are
    computed only when asked (explain records, failures)."""

    placements: list[dict[str, Any]] | None
    candidate_nodes: int
    feasible_nodes: int
    failed_request: int | None
    stage: Stage | None = field(default=None, repr=False)  # first, or failed, request
    first: Stage | None = field(default=None, repr=False)

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


def model_mask(s: Structure, globs: tuple[str, ...]) -> BOOL:
    """Per GPU row: its model matches one of the globs (cached with the structure)."""
    key = ("model", globs)
    hit = s.cache.get(key)
    if hit is None:
        ok = np.array([any(fnmatchcase(n, g) for g in globs) for n in s.model_names], dtype=bool)
        hit = ok[s.gpu_model] if ok.size else np.zeros(s.n_gpus, dtype=bool)
        _remember(s, key, hit)
    return hit


def qualification(s: Structure, r: GpuRequest) -> BOOL | None:
    """Per GPU row: model and registry memory meet the request (None: every GPU qualifies).
    Cached per (model globs, minimum memory) with the structure; never mutate the result."""
    if r.gpu_model is None and r.gpu_memory_mb is None:
        return None
    key = ("qual", r.gpu_model, r.gpu_memory_mb)
    hit = s.cache.get(key)
    if hit is None:
        hit = np.ones(s.n_gpus, dtype=bool)
        if r.gpu_model is not None:
            hit &= model_mask(s, r.gpu_model)
        if r.gpu_memory_mb is not None:
            hit &= s.gpu_memory_mb >= r.gpu_memory_mb
        _remember(s, key, hit)
    return hit


def _remember(s: Structure, key: Any, value: Any) -> None:
    if len(s.cache) >= _CACHE_LIMIT:
        s.cache.clear()
    s.cache[key] = value


def per_node(s: Structure, mask: BOOL) -> npt.NDArray[np.int32]:
    """Count of true GPU rows per node."""
    return s.node_counter(mask)


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
    excl = np.fromiter(excluded, dtype=np.int64, count=len(excluded))
    qual = qualification(s, r)
    gmask: BOOL | None = None
    if qual is None and r.gpu_memory_mb is None:
        avail = fleet.node_free.copy()
        free_excl = excl[~fleet.held[excl]]
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
            dom = s.gpu_domain[free_excl]
            np.subtract.at(dom_avail, dom[dom >= 0], 1)
        else:
            dom_avail = s.domain_counter(gmask)
        node_dkey = _best_domains(s, dom_avail, r.gpus)
        ok &= node_dkey != INF
    filter_failed = np.zeros(s.n_nodes, dtype=bool)
    if r.node_filter is not None:
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
    picked: list[int] = (gs + np.flatnonzero(local)[: st.request.gpus]).tolist()
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
        _remember(s, key, hit)
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
        rows = (s.gpu_row(k) for k in unavailable)
        excluded = {r for r in rows if r is not None}
        taken: set[int] = set()
        taken_res: dict[int, tuple[int, int]] = {}
        placements: list[dict[str, Any]] = []
        first: Stage | None = None
        for i, r in enumerate(requests):
            st = _evaluate(fleet, s, cand, r, strategy, excluded, taken, taken_res)
            st.feasible = feasible = np.flatnonzero(st.ok)
            st.keys = keys = st.key()[feasible]
            if i == 0:
                first = st
            if feasible.size == 0:
                return PlacementOutcome(None, candidate_nodes, 0, i, st, first)
            row = int(feasible[int(np.argmin(keys))])
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
        feasible_nodes = int(first.feasible.size) if first is not None else 0
        return PlacementOutcome(placements, candidate_nodes, feasible_nodes, None, first, first)


# --------------------------------------------------------------------------- rejections
KINDS = ("node_filter", "gpu_model", "gpu_memory", "insufficient_gpus", "vcpus", "memory", "nvlink")


def _masks(st: Stage) -> dict[str, BOOL]:
    """Per reason kind, the rejected candidate nodes with that reason. Every rejected node is in
    at least one mask: the masks mirror the conjunction that defines ``st.ok``."""
    s, r = st.s, st.request
    rejected = st.cand & ~st.ok
    short = rejected & (st.avail < r.gpus)
    none = np.zeros(s.n_nodes, dtype=bool)
    no_model, no_memory = none, none
    of_model = s.node_gpu_count
    if r.gpus > 0 and r.gpu_model is not None:
        of_model = per_node(s, model_mask(s, r.gpu_model))
        no_model = short & (of_model == 0)
    if r.gpus > 0 and r.gpu_memory_mb is not None:
        no_memory = short & (per_node(s, _qual_rows(st)) == 0) & (of_model > 0)
    masks = {
        "node_filter": rejected & st.filter_failed,
        "gpu_model": no_model,
        "gpu_memory": no_memory,
        "insufficient_gpus": short & ~no_model & ~no_memory,
    }
    if st.vcpus_left is not None:
        masks["vcpus"] = rejected & (st.vcpus_left < (r.vcpus or 0))
    if st.memory_left is not None:
        masks["memory"] = rejected & (st.memory_left < (r.memory_mb or 0))
    if st.node_dkey is not None:
        masks["nvlink"] = rejected & (st.node_dkey == INF) & (~short | (s.node_domain_count == 0))
    return masks


def _qual_rows(st: Stage) -> BOOL:
    qual = qualification(st.s, st.request)
    return np.ones(st.s.n_gpus, dtype=bool) if qual is None else qual


def summarise(st: Stage) -> dict[str, int]:
    """Reason kind → rejected candidate nodes (a node may count under several kinds)."""
    counts = {k: int(np.count_nonzero(m)) for k, m in _masks(st).items()}
    return {k: n for k, n in counts.items() if n}


def explain_rows(st: Stage, limit: int) -> list[Rejection]:
    """The first ``limit`` rejected candidate nodes in (cluster_id, node_id) order, with texts."""
    s = st.s
    masks = _masks(st)
    rows = np.flatnonzero(st.cand & ~st.ok)
    rows = rows[np.argsort(s.node_rank[rows], kind="stable")][: max(0, limit)]
    out = []
    for row in rows.tolist():
        kinds = tuple(k for k in KINDS if k in masks and masks[k][row])
        out.append(
            Rejection(
                cluster_id=s.cluster_ids[int(s.node_cluster[row])],
                node_id=s.node_ids[row],
                reasons=tuple(_text(st, k, row) for k in kinds),
                kinds=kinds,
            )
        )
    return out


def _text(st: Stage, kind: str, row: int) -> str:
    s, r = st.s, st.request
    gs, ge = int(s.node_gpu_start[row]), int(s.node_gpu_end[row])
    if kind == "node_filter":
        return "node does not match the request's node_filter"
    if kind == "gpu_model":
        names = sorted({s.model_names[int(m)] for m in s.gpu_model[gs:ge]})
        has = ", ".join(names) if names else "no GPUs"
        return f"no GPU of model {' or '.join(r.gpu_model or ())}; node has {has}"
    if kind == "gpu_memory":
        rows = np.arange(gs, ge)
        if r.gpu_model is not None:
            rows = rows[model_mask(s, r.gpu_model)[gs:ge]]
        mems = sorted({int(m) for m in s.gpu_memory_mb[rows]})
        have = f"{mems[0]} MB" if len(mems) == 1 else f"at most {mems[-1]} MB"
        return f"GPUs have {have}, {r.gpu_memory_mb} needed"
    if kind == "insufficient_gpus":
        return _insufficient(st, row, gs, ge)
    if kind == "vcpus":
        assert st.vcpus_left is not None
        return f"node has {int(st.vcpus_left[row])} vCPUs left, {r.vcpus} needed"
    if kind == "memory":
        assert st.memory_left is not None
        return f"node has {int(st.memory_left[row])} MB of memory left, {r.memory_mb} needed"
    if int(s.node_domain_count[row]) == 0 or st.dom_avail is None:
        return "node has no NVLink topology"
    d0 = int(s.node_domain_start[row])
    largest = int(st.dom_avail[d0 : d0 + int(s.node_domain_count[row])].max())
    return f"no NVLink domain with {r.gpus} available GPUs (the largest has {largest})"


def _insufficient(st: Stage, row: int, gs: int, ge: int) -> str:
    r, fleet = st.request, st.fleet
    qual = _qual_rows(st)[gs:ge] if (r.gpu_model or r.gpu_memory_mb is not None) else None
    counts = dict.fromkeys(
        ("not of the model or memory", "held", "taken by earlier requests", "unavailable",
         "below free-memory need"),
        0,
    )  # fmt: skip
    same = fleet.structure is st.s
    for i in range(ge - gs):
        g = gs + i
        if qual is not None and not qual[i]:
            counts["not of the model or memory"] += 1
        elif same and fleet.held[g]:
            counts["held"] += 1
        elif g in st.taken:
            counts["taken by earlier requests"] += 1
        elif g in st.excluded:
            counts["unavailable"] += 1
        elif same and r.gpu_memory_mb is not None and fleet.metric_free_mb[g] < r.gpu_memory_mb:
            counts["below free-memory need"] += 1
    parts = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    detail = f" ({parts})" if parts else ""
    total = ge - gs
    if not parts and int(st.avail[row]) == total:
        return f"node has only {total} GPU{'s' if total != 1 else ''}, {r.gpus} needed"
    return f"only {int(st.avail[row])} of {total} GPUs available{detail}, {r.gpus} needed"
