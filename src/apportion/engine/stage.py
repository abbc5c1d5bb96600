"""One request evaluated over every node row: the :class:`Stage` record, its filter
:class:`Step` records and the GPU masks it uses.

Who uses it: :func:`apportion.engine.placement.place` builds one :class:`Stage` per request and
picks from it; each filter step of the kernel appends a :class:`Step` (its reason and the rows
that passed it) as it narrows the feasible set, and :mod:`apportion.engine.explain` renders why
each rejected candidate node said no from those steps alone. The cached per-GPU masks
(:func:`model_mask`, :func:`qualification`) live with the fleet structure's cache. Pure: no I/O,
never changes the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from apportion.engine.decisions import Reason
from apportion.engine.requests import GpuRequest
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import Structure

BOOL = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
M = 1 << 16  # bound on GPUs per node, GPUs left and domains per node
INF = np.iinfo(np.int64).max
_CACHE_LIMIT = 256
_U32_MAX = np.uint32(np.iinfo(np.uint32).max)
_I32_MAX = int(np.iinfo(np.int32).max)


class Strategy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"
    TOPOLOGY = "topology"


class Step(NamedTuple):
    """One filter step of the kernel: why it rejects, and the rows that passed it — node rows,
    or GPU rows for the GPU-level steps ``GPU_MODEL`` (the model matches) and ``GPU_MEMORY``
    (model and registry memory meet the request). Masks are kept by reference: recording a step
    costs no array work (a tuple: the kernel's hot path makes several per request)."""

    reason: Reason
    passed: BOOL


@dataclass
class Stage:
    """One request evaluated over every node row (fresh arrays, a snapshot of the decision).

    ``steps`` are the filter steps in the order they ran; ``ok`` is the candidates that passed
    every node-level one. ``free`` (GPU rows not held) and ``metric_low`` (GPU rows whose live
    free memory is below the request's) are the GPU-level masks of the mask path, kept for the
    texts (None on the counter path)."""

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
    steps: list[Step]
    ok: BOOL
    excluded: frozenset[int]
    taken: frozenset[int]
    free: BOOL | None = None
    metric_low: BOOL | None = None
    _feasible: npt.NDArray[np.intp] | None = field(default=None, repr=False)
    _keys: I64 | None = field(default=None, repr=False)

    def passed(self, reason: Reason) -> BOOL | None:
        """The rows that passed the step of ``reason`` (None: the step did not run)."""
        for step in self.steps:
            if step.reason is reason:
                return step.passed
        return None

    @property
    def simple(self) -> bool:
        """``ok`` is exactly "a candidate with ``request.gpus`` available GPUs": no capacity,
        NVLink or node-filter condition took part (the fast choice of :meth:`choose` holds)."""
        r = self.request
        return r.vcpus is None and r.memory_mb is None and not self.nvlink and r.node_filter is None

    @property
    def feasible(self) -> npt.NDArray[np.intp]:
        """Feasible node rows, ascending (computed on first use; ``ok`` is this stage's own)."""
        if self._feasible is None:
            self._feasible = np.flatnonzero(self.ok)
        return self._feasible

    @property
    def keys(self) -> I64:
        """:meth:`key` of each :attr:`feasible` row (computed on first use)."""
        if self._keys is None:
            self._keys = self.key()[self.feasible]
        return self._keys

    def choose(self, all_candidates: bool) -> int | None:
        """The best feasible node row (None: none is feasible); ``all_candidates`` says that
        every node row is a candidate (the mask then needs no pass).

        binpack and spread on a :attr:`simple` stage need no keys: the best count of GPUs left
        over the candidates in a few passes of int32, then the first row in ``node_rank`` order
        that has it, as the keys' tie-break does. Otherwise the argmin of :attr:`keys`."""
        if not (self.simple and self.strategy is not Strategy.TOPOLOGY):
            if self.feasible.size == 0:
                return None
            return int(self.feasible[int(np.argmin(self.keys))])
        if self.avail.size == 0:
            return None
        need = self.request.gpus
        values: npt.NDArray[Any]
        if self.strategy is Strategy.BINPACK:
            # GPUs left over; a shortfall (negative) wraps to a huge unsigned value
            values = np.subtract(self.avail, need, dtype=np.int32).view(np.uint32)
            if not all_candidates:
                values[~self.cand] = _U32_MAX
            best = values.min()
            if int(best) > _I32_MAX:
                return None
        else:
            values = self.avail if all_candidates else np.where(self.cand, self.avail, -1)
            best = values.max()
            if int(best) < need:
                return None
        best_rows = values == best
        order = rank_order(self.s)
        if order is None:  # rows are in rank order: the first true one (argmax stops there)
            return int(np.argmax(best_rows))
        return int(order[int(np.argmax(best_rows[order]))])

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


def rank_order(s: Structure) -> npt.NDArray[np.intp] | None:
    """Node rows sorted by ``node_rank``, or None when the rows already are in that order
    (cached with the structure)."""
    hit = s.cache.get("rank-order", False)
    if hit is False:
        order = np.argsort(s.node_rank, kind="stable")
        hit = None if bool(np.all(order == np.arange(order.size))) else order
        remember(s, "rank-order", hit)
    return hit  # type: ignore[no-any-return]


def model_mask(s: Structure, globs: tuple[str, ...]) -> BOOL:
    """Per GPU row: its model matches one of the globs (cached with the structure)."""
    key = ("model", globs)
    hit = s.cache.get(key)
    if hit is None:
        ok = np.array([any(fnmatchcase(n, g) for g in globs) for n in s.model_names], dtype=bool)
        hit = ok[s.gpu_model] if ok.size else np.zeros(s.n_gpus, dtype=bool)
        remember(s, key, hit)
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
        remember(s, key, hit)
    return hit


def remember(s: Structure, key: Any, value: Any) -> None:
    """Keep ``value`` in the structure's cache under ``key`` (emptied when it is full)."""
    if len(s.cache) >= _CACHE_LIMIT:
        s.cache.clear()
    s.cache[key] = value


def per_node(s: Structure, mask: BOOL) -> npt.NDArray[np.int32]:
    """Count of true GPU rows per node."""
    return s.node_counter(mask)
