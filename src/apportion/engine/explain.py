"""Why the kernel decided as it did, rendered from what its filter steps recorded.

Who uses it: :func:`apportion.engine.placement.place` wraps its stages in an :class:`Evidence`;
the decision record (:class:`~apportion.engine.decisions.Decision`) and the
``NoFeasiblePlacement`` error (:meth:`~apportion.engine.decisions.Unplaceable.error`) read it.
Nothing here decides: every rejected node's reasons come from the :class:`~apportion.engine.stage.Step`
masks the kernel kept while it narrowed the feasible set; this module only aggregates them per
node, orders them and words them. Work happens only when a record is read (explain, failures).
Pure: never changes the fleet.
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from apportion.engine.decisions import Reason, Rejection, Score
from apportion.engine.requests import GpuRequest
from apportion.engine.stage import BOOL, Stage, per_node
from apportion.errors import NoFeasiblePlacement

_T = TypeVar("_T")

REJECTIONS_LIMIT = 50  # rejected nodes listed in an explain record or a NoFeasiblePlacement

_PHRASES = {
    Reason.INSUFFICIENT_GPUS: "{n} have too few available GPUs",
    Reason.GPU_MODEL: "{n} lack the model",
    Reason.GPU_MEMORY: "{n} have GPUs with too little memory",
    Reason.VCPUS: "{n} have too few vCPUs",
    Reason.MEMORY: "{n} have too little memory",
    Reason.NVLINK: "{n} have no NVLink domain that fits",
    Reason.NODE_FILTER: "{n} do not match node_filter",
}


class Evidence(NamedTuple):
    """What the kernel saw in one placement call: the candidate node count, the requests, the
    stage of the first request (feasible nodes, top scores) and ``stage``, the failed request's
    (or the first's) whose steps say why each rejected candidate said no. Immutable (a tuple:
    every placement call makes one)."""

    candidate_nodes: int
    requests: tuple[GpuRequest, ...]
    stage: Stage | None
    first: Stage | None
    placed: bool

    @property
    def feasible_nodes(self) -> int:
        """Feasible candidate nodes of the first request (0 when the placement failed)."""
        return int(self.first.feasible.size) if self.placed and self.first is not None else 0

    def top_scores(self, k: int = 5) -> list[Score]:
        """Up to ``k`` best feasible nodes of the first request, best first."""
        return [] if self.first is None else _top(self.first, k)

    def rejections(self, limit: int = REJECTIONS_LIMIT) -> list[Rejection]:
        """The first ``limit`` rejected candidate nodes in (cluster_id, node_id) order."""
        return [] if self.stage is None else _rejections(self.stage, limit)

    def summary(self) -> dict[Reason, int]:
        """Reason → rejected candidate nodes with it (a node may count under several)."""
        if self.stage is None:
            return {}
        counts = {k: int(np.count_nonzero(m)) for k, m in rejected_by(self.stage).items()}
        return {k: n for k, n in counts.items() if n}

    def no_feasible(self, index: int) -> NoFeasiblePlacement:
        """The wire error for request ``index`` finding no node (CONTRACTS §2)."""
        request = self.requests[index]
        summary = self.summary()
        which = f"request {index} of the gang" if len(self.requests) > 1 else "the request"
        if self.candidate_nodes == 0:
            reason = "there are no candidate nodes"
        else:
            parts = []
            for kind, count in sorted(summary.items(), key=lambda kv: (-kv[1], kv[0].value)):
                noun = f"{count} node{'s' if count != 1 else ''}"
                parts.append(_PHRASES[kind].format(n=noun))
            reason = ", ".join(parts) or "no candidate node fits"
        return NoFeasiblePlacement(
            f"no node can take {request.describe()} ({which}): {reason}",
            details={
                "rejections": [r.to_json() for r in self.rejections()],
                "summary": {k.value: n for k, n in summary.items()},
                "failed_request": index,
                "candidate_nodes": self.candidate_nodes,
            },
        )


def rejected_by(st: Stage) -> dict[Reason, BOOL]:
    """Per reason, the rejected candidate nodes it names, from the stage's recorded steps.

    A node short of GPUs is named by the GPU-level step that left it none (``gpu_model``: no
    GPU of the model; ``gpu_memory``: GPUs of the model, none with the memory), else
    ``insufficient_gpus``; ``nvlink`` names a node whose domains do not fit only when its GPU
    count does not already explain it (or it has no domains). Every rejected node is named at
    least once: ``ok`` is the conjunction of the same steps."""
    s = st.s
    rejected = st.cand & ~st.ok
    out: dict[Reason, BOOL] = {}
    matches = st.passed(Reason.NODE_FILTER)
    if matches is not None:
        out[Reason.NODE_FILTER] = rejected & ~matches
    enough = st.passed(Reason.INSUFFICIENT_GPUS)
    assert enough is not None, "the GPU count step always runs"
    short = rejected & ~enough
    of_model = s.node_gpu_count
    unnamed = short
    model = st.passed(Reason.GPU_MODEL)
    if model is not None:
        of_model = per_node(s, model)
        out[Reason.GPU_MODEL] = short & (of_model == 0)
        unnamed = unnamed & ~out[Reason.GPU_MODEL]
    qualified = st.passed(Reason.GPU_MEMORY)
    if qualified is not None:
        out[Reason.GPU_MEMORY] = short & (per_node(s, qualified) == 0) & (of_model > 0)
        unnamed = unnamed & ~out[Reason.GPU_MEMORY]
    out[Reason.INSUFFICIENT_GPUS] = unnamed
    for reason in (Reason.VCPUS, Reason.MEMORY):
        fits = st.passed(reason)
        if fits is not None:
            out[reason] = rejected & ~fits
    fits = st.passed(Reason.NVLINK)
    if fits is not None:
        out[Reason.NVLINK] = rejected & ~fits & (~short | (s.node_domain_count == 0))
    return out


def _rejections(st: Stage, limit: int) -> list[Rejection]:
    s = st.s
    masks = rejected_by(st)
    rows = np.flatnonzero(st.cand & ~st.ok)
    rows = rows[np.argsort(s.node_rank[rows], kind="stable")][: max(0, limit)]
    named = [(kind, masks[kind][rows].tolist()) for kind in Reason if kind in masks]
    clusters = s.node_cluster[rows].tolist()
    short = Reason.INSUFFICIENT_GPUS
    tallies = _tallies(st, rows[masks[short][rows]]) if short in masks else {}
    out = []
    for i, row in enumerate(rows.tolist()):
        kinds = _shared(tuple(kind for kind, column in named if column[i]))
        texts = (
            _insufficient(st, row, tallies[row]) if k is short else _text(st, k, row) for k in kinds
        )
        out.append(
            Rejection(
                cluster_id=s.cluster_ids[clusters[i]],
                node_id=s.node_ids[row],
                kinds=kinds,
                reasons=_shared(tuple(sys.intern(text) for text in texts)),
            )
        )
    return out


@functools.lru_cache(maxsize=4096)
def _shared(value: tuple[_T, ...]) -> tuple[_T, ...]:
    """One tuple for equal ones: a job's decision is kept as long as the job, and the same few
    reasons (and their texts, interned) recur over its rejected nodes and over jobs."""
    return value


def _text(st: Stage, kind: Reason, row: int) -> str:
    s, r = st.s, st.request
    gs, ge = int(s.node_gpu_start[row]), int(s.node_gpu_end[row])
    if kind is Reason.NODE_FILTER:
        return "node does not match the request's node_filter"
    if kind is Reason.GPU_MODEL:
        names = sorted({s.model_names[int(m)] for m in s.gpu_model[gs:ge]})
        has = ", ".join(names) if names else "no GPUs"
        return f"no GPU of model {' or '.join(r.gpu_model or ())}; node has {has}"
    if kind is Reason.GPU_MEMORY:
        rows = np.arange(gs, ge)
        model = st.passed(Reason.GPU_MODEL)
        if model is not None:
            rows = rows[model[gs:ge]]
        mems = sorted({int(m) for m in s.gpu_memory_mb[rows]})
        have = f"{mems[0]} MB" if len(mems) == 1 else f"at most {mems[-1]} MB"
        return f"GPUs have {have}, {r.gpu_memory_mb} needed"
    if kind is Reason.VCPUS:
        assert st.vcpus_left is not None
        return f"node has {int(st.vcpus_left[row])} vCPUs left, {r.vcpus} needed"
    if kind is Reason.MEMORY:
        assert st.memory_left is not None
        return f"node has {int(st.memory_left[row])} MB of memory left, {r.memory_mb} needed"
    if int(s.node_domain_count[row]) == 0 or st.dom_avail is None:
        return "node has no NVLink topology"
    d0 = int(s.node_domain_start[row])
    largest = int(st.dom_avail[d0 : d0 + int(s.node_domain_count[row])].max())
    return f"no NVLink domain with {r.gpus} available GPUs (the largest has {largest})"


def _gpu_step(st: Stage) -> BOOL | None:
    """GPU rows that passed every GPU-level step (model and memory), None if none ran."""
    qualified = st.passed(Reason.GPU_MEMORY)
    return st.passed(Reason.GPU_MODEL) if qualified is None else qualified


_TALLY = (
    "not of the model or memory",
    "held",
    "taken by earlier requests",
    "unavailable",
    "below free-memory need",
)


def _tallies(st: Stage, rows: npt.NDArray[np.intp]) -> dict[int, tuple[int, ...]]:
    """Where the GPUs of each node of ``rows`` went: per node, how many GPUs count under each
    of :data:`_TALLY`, a GPU under the first that applies — counted from the stage's GPU masks
    for every node at once. The counter path keeps no GPU mask: its held GPUs are read from
    the fleet while its structure is the stage's."""
    s, fleet = st.s, st.fleet
    starts = s.node_gpu_start[rows].astype(np.int64)
    lengths = s.node_gpu_end[rows].astype(np.int64) - starts
    offsets = np.cumsum(lengths) - lengths
    gpus = np.arange(int(lengths.sum())) + np.repeat(starts - offsets, lengths)
    qualified = _gpu_step(st)
    held: BOOL | None = None
    if st.free is not None:
        held = ~st.free[gpus]
    elif fleet.structure is st.s:
        held = fleet.held[gpus]
    steps = (
        None if qualified is None else ~qualified[gpus],
        held,
        _among(gpus, st.taken),
        _among(gpus, st.excluded),
        None if st.metric_low is None else st.metric_low[gpus],
    )
    uncounted = np.ones(gpus.size, dtype=bool)
    columns = []
    for mask in steps:
        if mask is None:
            columns.append([0] * len(rows))
            continue
        counted = mask & uncounted
        uncounted &= ~counted
        running = np.concatenate(([0], np.cumsum(counted)))
        columns.append((running[offsets + lengths] - running[offsets]).tolist())
    return dict(zip(rows.tolist(), zip(*columns, strict=True), strict=True))


def _among(gpus: npt.NDArray[np.int64], wanted: frozenset[int]) -> BOOL | None:
    """Which of ``gpus`` are in ``wanted`` (None when it is empty)."""
    if not wanted:
        return None
    return np.isin(gpus, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))


def _insufficient(st: Stage, row: int, tally: tuple[int, ...]) -> str:
    """Why a node has too few GPUs: its available and total GPUs and where the others went
    (``tally``, from :func:`_tallies`)."""
    gs, ge = int(st.s.node_gpu_start[row]), int(st.s.node_gpu_end[row])
    return _insufficient_words(tally, int(st.avail[row]), ge - gs, st.request.gpus)


@functools.lru_cache(maxsize=1024)
def _insufficient_words(tally: tuple[int, ...], avail: int, total: int, needed: int) -> str:
    """:func:`_insufficient`'s words (the same few recur over nodes and placements)."""
    parts = ", ".join(f"{n} {what}" for what, n in zip(_TALLY, tally, strict=True) if n)
    detail = f" ({parts})" if parts else ""
    if not parts and avail == total:
        return f"node has only {total} GPU{'s' if total != 1 else ''}, {needed} needed"
    return f"only {avail} of {total} GPUs available{detail}, {needed} needed"


def _top(st: Stage, k: int) -> list[Score]:
    feasible, keys = st.feasible, st.keys
    if feasible.size > k:
        part = np.argpartition(keys, k - 1)[:k]
        feasible, keys = feasible[part], keys[part]
    order = np.argsort(keys, kind="stable")
    scores = st.score(keys)
    s = st.s
    return [
        Score(
            cluster_id=s.cluster_ids[int(s.node_cluster[feasible[i]])],
            node_id=s.node_ids[int(feasible[i])],
            score=int(scores[i]),
        )
        for i in order
    ]
