"""The fleet view's structure: cluster documents turned into numpy arrays, per cluster and global.

Who uses it: :class:`apportion.registry.fleet.FleetView` turns each cluster document once into a
:class:`Segment` (:func:`build_segment`) and, after a structure change, concatenates the segments
into one immutable :class:`Structure` (the GPU-major global arrays, row lookups and the
:class:`SegmentCounter` per node and per NVLink domain). The placement kernels read a
``Structure`` directly. Nothing here holds state that changes in place (``held``, metrics): that
is the view's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from apportion.registry.documents.readers import expand_node_gpus, nvlink_domains

GpuKey = tuple[str, str, str]
"""(cluster_id, node_id, gpu index as str)."""

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
BOOL = npt.NDArray[np.bool_]


_POPCOUNT: Any = getattr(np, "bitwise_count", None)  # numpy >= 2
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class SegmentCounter:
    """Counts the true entries of a per-GPU-row mask per segment (a node or an NVLink domain).

    ``rows`` lists GPU rows in segment order (None: the segments tile the rows in order).
    When every segment has the same width (1, 2, 4 or a multiple of 8 rows: the usual
    fleet of identical nodes), the mask's bytes are viewed as unsigned words and counted with
    one popcount per segment; otherwise one cumulative sum and a difference."""

    def __init__(self, sizes: npt.NDArray[Any], rows: npt.NDArray[Any] | None) -> None:
        self.rows = rows
        self.n = int(sizes.shape[0])
        ends = np.cumsum(sizes, dtype=np.int64)
        self.lo, self.hi = ends - sizes, ends
        length = int(ends[-1]) if self.n else 0
        self.width = 0
        if _POPCOUNT is not None and self.n and bool((sizes == sizes[0]).all()):
            width = int(sizes[0])
            if (width in _UINT or width % 8 == 0) and self.n * width == length:
                self.width = width

    def __call__(self, mask: BOOL) -> I32:
        m = mask if self.rows is None else mask[self.rows]
        w = self.width
        if w and w <= 8:
            return _POPCOUNT(m.view(_UINT[w])).astype(np.int32)  # type: ignore[no-any-return]
        if w:
            words = _POPCOUNT(m.view(np.uint64)).reshape(self.n, w // 8)
            return words.sum(axis=1, dtype=np.int32)  # type: ignore[no-any-return]
        c = np.zeros(m.shape[0] + 1, dtype=np.int32)
        np.cumsum(m, out=c[1:])
        counts: I32 = c[self.hi] - c[self.lo]
        return counts


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, eq=False)
class Segment:
    """One cluster document as arrays (node rows and GPU rows local to the cluster)."""

    cluster_id: str
    node_ids: list[str]
    node_docs: list[Mapping[str, Any]]
    node_index: dict[str, int]
    node_gpu_count: I32
    node_vcpus: I32
    node_memory_mb: I64
    node_local_rank: I32
    node_domain_count: I32
    gpu_model: npt.NDArray[np.int16]
    gpu_memory_mb: I32
    gpu_domain: I32  # local domain id, -1 none
    domain_node: I32  # local node row of each local domain

    @property
    def n_gpus(self) -> int:
        return int(self.gpu_model.shape[0])


def build_segment(doc: Mapping[str, Any], model_ids: dict[str, int]) -> Segment:
    """Arrays for one (validated) cluster document; new model names are added to ``model_ids``."""
    nodes = (doc.get("nodes") or {}).get("nodeData") or []
    node_ids: list[str] = []
    gcount, vcpus, mem, dcount = [], [], [], []
    models: list[int] = []
    gmem: list[int] = []
    gdom: list[int] = []
    dnode: list[int] = []
    for row, node in enumerate(nodes):
        node_ids.append(str(node["id"]))
        gpus = expand_node_gpus(node)
        gcount.append(len(gpus))
        vcpus.append(_int((node.get("vcpus") or {}).get("count")))
        mem.append(_int(node.get("memory")))
        for gpu in gpus:
            name = str(gpu.get("modelName", ""))
            models.append(model_ids.setdefault(name, len(model_ids)))
            gmem.append(_int(gpu.get("memory")))
        doms = sorted((d for d in nvlink_domains(node) if d), key=min)
        local = [-1] * len(gpus)
        for dom in doms:
            for idx in dom:
                if 0 <= idx < len(gpus):
                    local[idx] = len(dnode)
            dnode.append(row)
        gdom.extend(local)
        dcount.append(len(doms))
    order = sorted(range(len(node_ids)), key=node_ids.__getitem__)
    rank = np.empty(len(node_ids), dtype=np.int32)
    rank[order] = np.arange(len(node_ids), dtype=np.int32)
    return Segment(
        cluster_id=str(doc["id"]),
        node_ids=node_ids,
        node_docs=list(nodes),
        node_index={nid: i for i, nid in enumerate(node_ids)},
        node_gpu_count=np.asarray(gcount, dtype=np.int32),
        node_vcpus=np.asarray(vcpus, dtype=np.int32),
        node_memory_mb=np.asarray(mem, dtype=np.int64),
        node_local_rank=rank,
        node_domain_count=np.asarray(dcount, dtype=np.int32),
        gpu_model=np.asarray(models, dtype=np.int16),
        gpu_memory_mb=np.asarray(gmem, dtype=np.int32),
        gpu_domain=np.asarray(gdom, dtype=np.int32),
        domain_node=np.asarray(dnode, dtype=np.int32),
    )


class Structure:
    """The global structure arrays (immutable once built; replaced on a structure change)."""

    def __init__(self, segments: list[Segment], model_names: list[str], version: int) -> None:
        self.version = version
        self.segments = segments
        self.model_names = list(model_names)
        self.cluster_ids = [s.cluster_id for s in segments]
        self.cluster_pos = {cid: i for i, cid in enumerate(self.cluster_ids)}
        n_nodes = [len(s.node_ids) for s in segments]
        n_gpus = [s.n_gpus for s in segments]
        n_doms = [int(s.domain_node.shape[0]) for s in segments]
        self.cluster_node_start = np.concatenate([[0], np.cumsum(n_nodes)]).astype(np.int64)
        self.cluster_gpu_start = np.concatenate([[0], np.cumsum(n_gpus)]).astype(np.int64)
        dom_start = np.concatenate([[0], np.cumsum(n_doms)]).astype(np.int64)
        self.n_nodes = int(self.cluster_node_start[-1])
        self.n_gpus = int(self.cluster_gpu_start[-1])
        self.n_domains = int(dom_start[-1])

        def cat(name: str, dtype: Any) -> Any:
            parts = [getattr(s, name) for s in segments]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        self.node_cluster: I32 = np.repeat(np.arange(len(segments), dtype=np.int32), n_nodes)
        self.node_ids: list[str] = [nid for s in segments for nid in s.node_ids]
        self.node_docs: list[Mapping[str, Any]] = [d for s in segments for d in s.node_docs]
        self.node_gpu_count: I32 = cat("node_gpu_count", np.int32)
        self.node_gpu_start: I32 = (np.cumsum(self.node_gpu_count) - self.node_gpu_count).astype(
            np.int32
        )
        self.node_gpu_end: I32 = self.node_gpu_start + self.node_gpu_count
        self.node_vcpus: I32 = cat("node_vcpus", np.int32)
        self.node_memory_mb: I64 = cat("node_memory_mb", np.int64)
        self.node_domain_count: I32 = cat("node_domain_count", np.int32)
        self.node_domain_start: I32 = (
            np.cumsum(self.node_domain_count) - self.node_domain_count
        ).astype(np.int32)
        # rank of each node row in (cluster_id, node_id) order
        by_id = sorted(range(len(segments)), key=self.cluster_ids.__getitem__)
        offset = np.zeros(len(segments), dtype=np.int64)
        offset[by_id] = np.concatenate([[0], np.cumsum([n_nodes[i] for i in by_id])[:-1]])
        local_rank = cat("node_local_rank", np.int64)
        self.node_rank: I64 = offset[self.node_cluster] + local_rank if segments else local_rank
        self.gpu_node: I32 = np.repeat(np.arange(self.n_nodes, dtype=np.int32), self.node_gpu_count)
        self.gpu_index = (np.arange(self.n_gpus) - self.node_gpu_start[self.gpu_node]).astype(
            np.int16
        )
        self.gpu_model = cat("gpu_model", np.int16)
        self.gpu_memory_mb: I32 = cat("gpu_memory_mb", np.int32)
        local_dom = cat("gpu_domain", np.int64)
        gpu_cluster = np.repeat(np.arange(len(segments)), n_gpus)
        self.gpu_domain: I32 = np.where(
            local_dom >= 0, local_dom + dom_start[:-1][gpu_cluster] if segments else 0, -1
        ).astype(np.int32)
        dom_cluster = np.repeat(np.arange(len(segments)), n_doms)
        self.domain_node: I32 = (
            cat("domain_node", np.int64) + self.cluster_node_start[:-1][dom_cluster]
        ).astype(np.int32)
        self.domain_ordinal: I32 = (
            np.arange(self.n_domains) - self.node_domain_start[self.domain_node]
        ).astype(np.int32)
        has_dom = self.gpu_domain >= 0
        self.domain_size: I32 = np.bincount(
            self.gpu_domain[has_dom], minlength=self.n_domains
        ).astype(np.int32)

        self.cache: dict[Any, Any] = {}
        """Derived data of this structure, keyed by the caller (e.g. qualification masks)."""

    @cached_property
    def node_counter(self) -> SegmentCounter:
        """Counts a GPU-row mask per node row."""
        return SegmentCounter(self.node_gpu_count, None)

    @cached_property
    def domain_counter(self) -> SegmentCounter:
        """Counts a GPU-row mask per NVLink domain."""
        in_dom = np.flatnonzero(self.gpu_domain >= 0)
        rows = in_dom[np.argsort(self.gpu_domain[in_dom], kind="stable")]
        identity = rows.shape[0] == self.n_gpus and bool((rows == np.arange(self.n_gpus)).all())
        return SegmentCounter(self.domain_size, None if identity else rows)

    def min_per_node(self, domain_values: I64, empty: int) -> I64:
        """Per node row, the minimum of ``domain_values`` over its domains (``empty`` when it
        has none): strided minimum when every node has the same number of domains."""
        out = np.full(self.n_nodes, empty, dtype=np.int64)
        counts = self.node_domain_count
        if self.n_nodes and self.n_domains and bool((counts == counts[0]).all()):
            per = int(counts[0])
            out[:] = domain_values[0::per]
            for j in range(1, per):
                np.minimum(out, domain_values[j::per], out=out)
        elif self.n_domains:
            with_dom = np.flatnonzero(counts > 0)
            out[with_dom] = np.minimum.reduceat(domain_values, self.node_domain_start[with_dom])
        return out

    def node_row(self, cluster_id: str, node_id: str) -> int | None:
        ci = self.cluster_pos.get(cluster_id)
        if ci is None:
            return None
        local = self.segments[ci].node_index.get(node_id)
        return None if local is None else int(self.cluster_node_start[ci]) + local

    def gpu_row(self, key: GpuKey) -> int | None:
        row = self.node_row(key[0], key[1])
        gid = key[2]
        if row is None or not isinstance(gid, str) or not gid.isdecimal():
            return None
        idx = int(gid)
        return int(self.node_gpu_start[row]) + idx if idx < self.node_gpu_count[row] else None

    def gpu_model_name(self, row: int) -> str:
        """The model of the GPU at ``row``, as its cluster document names it."""
        return self.model_names[int(self.gpu_model[row])]

    def gpu_key(self, row: int) -> GpuKey:
        node = int(self.gpu_node[row])
        cid = self.cluster_ids[int(self.node_cluster[node])]
        return (cid, self.node_ids[node], str(int(self.gpu_index[row])))
