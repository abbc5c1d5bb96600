"""Why a request was not placed: per rejected candidate node, its reason kinds and texts.

Who uses it: :class:`apportion.engine.placement.PlacementOutcome` calls :func:`explain_rows` and
:func:`summarise` on demand (explain records, failures) with the stage of the first or failed
request. Every rejected candidate node gets at least one reason: the masks mirror the
conjunction that decided the stage's ``ok``. Pure: reads the stage, never changes the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from apportion.engine.stage import BOOL, INF, Stage, model_mask, per_node, qualification


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
