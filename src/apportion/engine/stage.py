"""One request evaluated over every node row: the :class:`Stage` record and the GPU masks it uses.

Who uses it: :func:`apportion.engine.placement.place` builds one :class:`Stage` per request and
picks from it; :mod:`apportion.engine.rejections` reads the same stage afterwards to say why each
rejected candidate node said no. The cached per-GPU masks (:func:`model_mask`,
:func:`qualification`) live with the fleet structure's cache, shared by both. Pure: no I/O, never
changes the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.engine.requests import GpuRequest
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import Structure

BOOL = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
M = 1 << 16  # bound on GPUs per node, GPUs left and domains per node
INF = np.iinfo(np.int64).max
_CACHE_LIMIT = 256


class Strategy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"
    TOPOLOGY = "topology"


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
