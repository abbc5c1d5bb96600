"""The columnar fleet view: every cluster, node and GPU of the registry as numpy arrays.

Who uses it: the registry service keeps one :class:`FleetView` in step with its documents
(``set_cluster`` / ``remove_cluster`` on document changes, ``apply_metrics`` on metrics
pushes); the hold manager (``allocation/holds.py``) marks GPUs ``held`` when an allocation or
job takes them; the placement kernels (:mod:`apportion.engine.placement`) read it to score
every node in one vectorised pass.

Layout (built by :mod:`apportion.registry.fleet_structure`). Each cluster document is turned
once into a *segment* (its own small arrays). The global, GPU-major arrays are the concatenation
of the segments in insertion order, rebuilt lazily on the first read after a structure change
(so loading 1,000 clusters one by one costs one concatenation per read, not a rebuild per
cluster). Node rows are therefore NOT sorted by ``(cluster_id, node_id)``; ``node_rank`` gives
each node row its position in that order, for deterministic tie-breaks. GPU rows of a node are
contiguous and in index order (``gpu row = node_gpu_start[node] + gpu index``). NVLink domains
of a node are contiguous and sorted by their lowest GPU index.

State (``held``, ``metric_free_mb``, ``metric_util``) and the per-node / per-domain counters
of GPUs not held are updated in place, in O(changed rows). The view is not thread-safe by
itself: mutators and readers that must see one consistent state hold ``fleet.lock``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from apportion.registry.fleet_structure import (
    BOOL,
    F32,
    I32,
    GpuKey,
    Segment,
    Structure,
    build_segment,
)

_SMALL_CHANGE = 32  # up to this many GPUs, set_held updates scalars instead of arrays


class FleetView:
    """GPU-major columnar arrays over every cluster/node/GPU in the registry.

    Structure arrays (``node_cluster``, ``node_ids``, ``node_docs``, ``node_gpu_start``,
    ``node_gpu_count``, ``node_vcpus``, ``node_memory_mb``, ``node_rank``, ``gpu_node``,
    ``gpu_index``, ``gpu_model`` (id into ``model_names``), ``gpu_memory_mb``, ``gpu_domain``)
    are rebuilt only when a cluster is added, replaced or removed, lazily on the next read.
    State arrays are updated in place: ``held`` (bool per GPU), ``metric_free_mb`` and
    ``metric_util`` (float32, NaN = no live metric), and the counters ``node_free`` /
    ``domain_free`` (GPUs not held, per node / per NVLink domain).
    ``version`` bumps on every change; ``structure_version`` only on structure changes.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.version = 0
        self.structure_version = 0
        self._docs: dict[str, Mapping[str, Any]] = {}
        self._segments: dict[str, Segment] = {}
        self._metrics: dict[str, tuple[Mapping[str, Any] | None, bool]] = {}
        self._model_ids: dict[str, int] = {}
        self._s = Structure([], [], 0)
        self._dirty = False
        self.held: BOOL = np.zeros(0, dtype=np.bool_)
        self.metric_free_mb: F32 = np.zeros(0, dtype=np.float32)
        self.metric_util: F32 = np.zeros(0, dtype=np.float32)
        self.node_free: I32 = np.zeros(0, dtype=np.int32)
        self.domain_free: I32 = np.zeros(0, dtype=np.int32)

    # ------------------------------------------------------------------ structure
    def set_cluster(self, doc: Mapping[str, Any]) -> None:
        """Add or replace a cluster (a validated document). Held flags of GPUs that still
        exist after a replacement are kept; the cluster's stored metrics are re-applied."""
        seg = build_segment(doc, self._model_ids)
        with self.lock:
            self._docs[seg.cluster_id] = doc
            self._segments[seg.cluster_id] = seg
            self._structure_changed()

    def remove_cluster(self, cluster_id: str) -> None:
        """Forget a cluster, its GPUs, holds and metrics (unknown ids are ignored)."""
        with self.lock:
            if self._segments.pop(cluster_id, None) is not None:
                self._docs.pop(cluster_id, None)
                self._structure_changed()
            self._metrics.pop(cluster_id, None)

    def _structure_changed(self) -> None:
        self._dirty = True
        self.version += 1
        self.structure_version += 1

    @property
    def structure(self) -> Structure:
        """The current structure, rebuilt first if a cluster changed since the last read."""
        with self.lock:
            if self._dirty:
                self._rebuild()
            return self._s

    def _rebuild(self) -> None:
        old, old_held = self._s, self.held
        old_free, old_util = self.metric_free_mb, self.metric_util
        new = Structure(
            list(self._segments.values()),
            sorted(self._model_ids, key=self._model_ids.__getitem__),
            self.structure_version,
        )
        held = np.zeros(new.n_gpus, dtype=np.bool_)
        free = np.full(new.n_gpus, np.nan, dtype=np.float32)
        util = np.full(new.n_gpus, np.nan, dtype=np.float32)
        moved_keys: list[GpuKey] = []
        for ci, seg in enumerate(new.segments):
            lo, hi = int(new.cluster_gpu_start[ci]), int(new.cluster_gpu_start[ci + 1])
            oi = old.cluster_pos.get(seg.cluster_id)
            if oi is None:
                continue
            olo, ohi = int(old.cluster_gpu_start[oi]), int(old.cluster_gpu_start[oi + 1])
            if old.segments[oi] is seg:
                held[lo:hi] = old_held[olo:ohi]
                free[lo:hi], util[lo:hi] = old_free[olo:ohi], old_util[olo:ohi]
            else:
                moved_keys.extend(
                    old.gpu_key(olo + int(r)) for r in np.flatnonzero(old_held[olo:ohi])
                )
        self._s, self.held, self.metric_free_mb, self.metric_util = new, held, free, util
        self._dirty = False
        for key in moved_keys:
            row = new.gpu_row(key)
            if row is not None:
                held[row] = True
        for ci, seg in enumerate(new.segments):
            oi = old.cluster_pos.get(seg.cluster_id)
            if (oi is None or old.segments[oi] is not seg) and seg.cluster_id in self._metrics:
                self._write_metrics(ci, *self._metrics[seg.cluster_id])
        self._recount()

    def _recount(self) -> None:
        s = self._s
        self.node_free = (
            s.node_gpu_count - np.bincount(s.gpu_node[self.held], minlength=s.n_nodes)
        ).astype(np.int32)
        dom = s.gpu_domain[self.held]
        self.domain_free = (
            s.domain_size - np.bincount(dom[dom >= 0], minlength=s.n_domains)
        ).astype(np.int32)

    # ------------------------------------------------------------------ state
    def apply_metrics(
        self, cluster_id: str, metrics_doc: Mapping[str, Any] | None, *, stale: bool = False
    ) -> None:
        """Write per-GPU ``freeMem`` / ``cudaUtilization`` of a metrics document in place.
        ``None``, ``stale=True`` or a document marked ``"stale": true`` clears the cluster's
        live columns to NaN. Entries for unknown nodes or GPU indices are ignored. The document
        is kept and re-applied if the cluster document is replaced."""
        stale = stale or bool(metrics_doc is not None and metrics_doc.get("stale") is True)
        with self.lock:
            self._metrics[cluster_id] = (metrics_doc, stale)
            s = self.structure
            ci = s.cluster_pos.get(cluster_id)
            if ci is not None:
                self._write_metrics(ci, metrics_doc, stale)
            self.version += 1

    def _write_metrics(self, ci: int, doc: Mapping[str, Any] | None, stale: bool) -> None:
        s = self._s
        lo, hi = int(s.cluster_gpu_start[ci]), int(s.cluster_gpu_start[ci + 1])
        self.metric_free_mb[lo:hi] = np.nan
        self.metric_util[lo:hi] = np.nan
        if doc is None or stale:
            return
        seg, node_start = s.segments[ci], int(s.cluster_node_start[ci])
        rows: list[int] = []
        frees: list[float] = []
        utils: list[float] = []
        for node in doc.get("nodes") or []:
            nid = node.get("id") if isinstance(node, Mapping) else None
            local = seg.node_index.get(nid) if isinstance(nid, str) else None
            if local is None:
                continue
            start, count = int(s.node_gpu_start[node_start + local]), int(seg.node_gpu_count[local])
            for gpu in node.get("gpus") or []:
                idx = gpu.get("gpu_id") if isinstance(gpu, Mapping) else None
                if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < count:
                    continue
                rows.append(start + idx)
                frees.append(_number(gpu.get("freeMem")))
                utils.append(_number(gpu.get("cudaUtilization")))
        if rows:
            self.metric_free_mb[rows] = frees
            self.metric_util[rows] = utils

    def set_held(self, keys: Iterable[GpuKey], held: bool) -> None:
        """Mark GPUs held (or free) by the engine; unknown keys are ignored."""
        with self.lock:
            s = self.structure
            rows = {r for r in (s.gpu_row(k) for k in keys) if r is not None}
            if not rows:
                return
            delta = -1 if held else 1
            if len(rows) <= _SMALL_CHANGE:  # a hold's few GPUs: scalar updates beat numpy calls
                for row in rows:
                    if bool(self.held[row]) != held:
                        self.held[row] = held
                        self.node_free[s.gpu_node[row]] += delta
                        domain = s.gpu_domain[row]
                        if domain >= 0:
                            self.domain_free[domain] += delta
                self.version += 1
                return
            idx = np.fromiter(rows, dtype=np.int64, count=len(rows))
            idx = idx[self.held[idx] != held]
            if idx.size:
                self.held[idx] = held
                np.add.at(self.node_free, s.gpu_node[idx], delta)
                dom = s.gpu_domain[idx]
                np.add.at(self.domain_free, dom[dom >= 0], delta)
            self.version += 1

    def is_held(self, key: GpuKey) -> bool:
        with self.lock:
            row = self.structure.gpu_row(key)
            return row is not None and bool(self.held[row])

    def held_keys(self) -> set[GpuKey]:
        with self.lock:
            s = self.structure
            return {s.gpu_key(int(r)) for r in np.flatnonzero(self.held)}

    # ------------------------------------------------------------------ lookups
    @property
    def cache(self) -> dict[Any, Any]:
        """The current structure's cache of derived data (dropped with the structure)."""
        return self.structure.cache

    def cluster_ids(self) -> list[str]:
        return list(self.structure.cluster_ids)

    def cluster_index(self, cluster_id: str) -> int | None:
        return self.structure.cluster_pos.get(cluster_id)

    def cluster_document(self, cluster_id: str) -> Mapping[str, Any] | None:
        return self._docs.get(cluster_id)

    def node_row(self, cluster_id: str, node_id: str) -> int | None:
        return self.structure.node_row(cluster_id, node_id)

    def gpu_row(self, key: GpuKey) -> int | None:
        return self.structure.gpu_row(key)

    def __getattr__(self, name: str) -> Any:
        # structure arrays (node_ids, gpu_model, ...) read through the lazily rebuilt structure
        if name.startswith("_") or name not in _STRUCTURE_ATTRS:
            raise AttributeError(name)
        return getattr(self.structure, name)

    @classmethod
    def from_cluster_data(cls, cluster_data: Mapping[str, Mapping[str, Any]]) -> FleetView:
        """A fleet over seed-format ``input_data["cluster_data"]``
        (``{id: {"data": doc, "cluster_metrics": doc | None}}``), nothing held. Used when a
        built-in policy runs without the server's fleet (offline testing)."""
        fleet = cls()
        for cid, entry in cluster_data.items():
            doc = entry["data"]
            if doc.get("id") != cid:
                doc = {**doc, "id": cid}
            fleet.set_cluster(doc)
            metrics = entry.get("cluster_metrics", entry.get("metrics"))
            if metrics is not None:
                fleet.apply_metrics(cid, metrics)
        return fleet


_STRUCTURE_ATTRS = frozenset(
    {
        "node_cluster", "node_ids", "node_docs", "node_gpu_start", "node_gpu_count",
        "node_gpu_end", "node_vcpus", "node_memory_mb", "node_rank", "node_domain_count",
        "gpu_node", "gpu_index", "gpu_model", "gpu_memory_mb", "gpu_domain", "model_names",
        "domain_node", "domain_size", "n_nodes", "n_gpus", "n_domains",
    }
)  # fmt: skip


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)
