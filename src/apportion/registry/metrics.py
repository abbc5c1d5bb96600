"""Metrics documents of the registry (CONTRACTS §4, seed 004's global cluster metrics).

The REST layer calls :func:`validate_metrics_document` on every ``PUT /clusters/{id}/metrics``
body (and the collectors on what they build); readers call :func:`mark_staleness` before a
stored document leaves the server; the fleet view calls :func:`node_gpu_free_memory`.

Choices made where the contract is silent (documented in ``docs/``):

- Known numeric fields must be finite and ≥ 0; utilisation percentages (``averageUtil``,
  ``memUtilization``, ``cudaUtilization``, ``avgMemUtilization``, ``avgCudaUtilization``) must
  also be ≤ 100. Any other number anywhere in the document must be finite.
- A node's ``gpu`` aggregates are filled in key by key when absent; stated ones are kept
  (they are measurements, not declarations, so they are not checked against ``gpus``).
- Staleness: a document is fresh while its age is ≤ the TTL (``age == ttl`` is fresh) and stale
  once it is older. Age counts from the server's receive time, never the client's timestamp.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from apportion.errors import InvalidRequest
from apportion.registry.fields import FieldErrors, amount, count, kind_of, obj, text
from apportion.timefmt import iso_utc

_PERCENT = 100.0
# field -> upper bound (None: no upper bound); all are ≥ 0
_NODE_MEMORY = {"freeMem": None, "usedMem": None, "averageUtil": _PERCENT}
_NODE_VCPU = {"load1m": None, "load5m": None, "load15m": None}
_NODE_GPU_AGG = {
    "totalUsedMem": None,
    "totalFreeMem": None,
    "totalMem": None,
    "avgMemUtilization": _PERCENT,
    "avgCudaUtilization": _PERCENT,
}
_GPU = {
    "usedMem": None,
    "freeMem": None,
    "totalMem": None,
    "memUtilization": _PERCENT,
    "cudaUtilization": _PERCENT,
    "powerUtilization": None,  # watts, as the seed's collector reports
    "temperature": None,
}
# node `gpu` aggregate -> (per-GPU field, how it is combined)
_AGG_FROM = {
    "totalUsedMem": ("usedMem", "sum"),
    "totalFreeMem": ("freeMem", "sum"),
    "totalMem": ("totalMem", "sum"),
    "avgMemUtilization": ("memUtilization", "mean"),
    "avgCudaUtilization": ("cudaUtilization", "mean"),
}


def validate_metrics_document(doc: Any, *, cluster_id: str, path: str = "body") -> dict[str, Any]:
    """Validate a pushed metrics document for ``cluster_id``; return it normalised (a new dict).

    Called by the REST layer on ``PUT /clusters/{id}/metrics`` and by the collectors.
    ``clusterId`` must equal ``cluster_id`` (it is set when absent); ``timestamp`` must be an
    ISO-8601 string (set to now, UTC, when absent); ``nodes`` defaults to ``[]``, each node's
    ``gpus`` to ``[]``; node ``gpu`` aggregates are computed from ``gpus`` when absent. Unknown
    keys are kept.

    Raises :class:`InvalidRequest` naming the first bad field in ``path`` (e.g.
    ``body.nodes[0].gpus[3].freeMem``), with every problem in ``details["errors"]``.
    """
    if not isinstance(doc, Mapping):
        raise InvalidRequest(f"{path} must be a JSON object (a metrics document)", path=path)
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    errs = FieldErrors()
    _check_finite(out, path, errs)
    if "clusterId" not in out:
        out["clusterId"] = cluster_id
    elif text(out["clusterId"], f"{path}.clusterId", errs) is not None and (
        out["clusterId"] != cluster_id
    ):
        errs.add(
            f"{path}.clusterId",
            f"{path}.clusterId is {out['clusterId']!r} but the metrics are for cluster "
            f"{cluster_id!r}; make them equal or leave clusterId out",
        )
    if "timestamp" not in out:
        out["timestamp"] = iso_utc(time.time(), zulu_ms=True)
    elif text(out["timestamp"], f"{path}.timestamp", errs) is not None:
        try:
            datetime.fromisoformat(out["timestamp"])
        except ValueError:
            errs.add(
                f"{path}.timestamp",
                f"{path}.timestamp {out['timestamp']!r} is not an ISO-8601 time; use e.g. "
                "'2026-01-31T12:00:00Z' or leave it out to have the receive time set",
            )
    if "cluster" in out:
        obj(out["cluster"], f"{path}.cluster", errs)
    nodes = out.setdefault("nodes", [])
    if not isinstance(nodes, list):
        errs.add(f"{path}.nodes", f"{path}.nodes must be a list, got {kind_of(nodes)}")
    else:
        seen: dict[str, int] = {}
        for i, node in enumerate(nodes):
            _check_node(node, f"{path}.nodes[{i}]", errs, seen, i)
    errs.raise_if_any()
    return out


def _check_finite(value: Any, p: str, errs: FieldErrors) -> None:
    """Every number anywhere in the document must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        errs.add(p, f"{p} must be a finite number, got {value}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{p}.{key}", errs)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{p}[{i}]", errs)


def _check_fields(
    group: Mapping[str, Any], fields: Mapping[str, float | None], p: str, errs: FieldErrors
) -> None:
    for key, most in fields.items():
        value = group.get(key)
        if key in group and not (isinstance(value, float) and not math.isfinite(value)):
            amount(value, f"{p}.{key}", errs, most=most)


def _check_node(node: Any, p: str, errs: FieldErrors, seen: dict[str, int], i: int) -> None:
    n = obj(node, p, errs)
    if n is None:
        return
    if "id" not in n:
        errs.add(f"{p}.id", f"{p}.id is required: the node id of the cluster document")
    elif text(n["id"], f"{p}.id", errs) is not None:
        if n["id"] in seen:
            errs.add(f"{p}.id", f"{p}.id {n['id']!r} already has metrics at index {seen[n['id']]}")
        else:
            seen[n["id"]] = i
    for key, fields in (("memory", _NODE_MEMORY), ("vcpu", _NODE_VCPU)):
        if key in n:
            group = obj(n[key], f"{p}.{key}", errs)
            if group is not None:
                _check_fields(group, fields, f"{p}.{key}", errs)
    gpus = n.setdefault("gpus", [])
    if not isinstance(gpus, list):
        errs.add(f"{p}.gpus", f"{p}.gpus must be a list, got {kind_of(gpus)}")
        return
    before = len(errs)
    indices: dict[int, int] = {}
    for k, entry in enumerate(gpus):
        gp = f"{p}.gpus[{k}]"
        g = obj(entry, gp, errs)
        if g is None:
            continue
        if "gpu_id" not in g:
            errs.add(f"{gp}.gpu_id", f"{gp}.gpu_id is required: the GPU's index on its node")
        elif (idx := count(g["gpu_id"], f"{gp}.gpu_id", errs)) is not None:
            if idx in indices:
                errs.add(f"{gp}.gpu_id", f"{gp}.gpu_id {idx} is also at {p}.gpus[{indices[idx]}]")
            indices.setdefault(idx, k)
        _check_fields(g, _GPU, gp, errs)
    if "gpu" in n:
        agg = obj(n["gpu"], f"{p}.gpu", errs)
        if agg is not None:
            _check_fields(agg, _NODE_GPU_AGG, f"{p}.gpu", errs)
            if "count" in agg:
                count(agg["count"], f"{p}.gpu.count", errs)
    else:
        agg = n["gpu"] = {}
    if agg is not None and len(errs) == before:
        _fill_gpu_aggregates(agg, gpus)


def _fill_gpu_aggregates(agg: dict[str, Any], gpus: list[dict[str, Any]]) -> None:
    """Set each absent aggregate from the per-GPU entries that carry its field."""
    for key, (field, how) in _AGG_FROM.items():
        if key in agg:
            continue
        values = [g[field] for g in gpus if field in g]
        total = sum(values)
        agg[key] = total if how == "sum" else (total / len(values) if values else 0)
    agg.setdefault("count", len(gpus))


def mark_staleness(
    doc: Mapping[str, Any], *, received_at: float, now: float, ttl_seconds: float
) -> dict[str, Any]:
    """A copy of the stored ``doc`` with ``"stale"`` and ``"age_seconds"`` added.

    Called by the readers (``GET /cluster/{id}``, queries, the policy's metrics client) with
    server-clock times in seconds. ``age = now - received_at`` (0 if the clock went back);
    stale when ``age > ttl_seconds`` — a document exactly ``ttl_seconds`` old is still fresh.
    """
    age = max(0.0, now - received_at)
    out = dict(doc)
    out["age_seconds"] = age
    out["stale"] = age > ttl_seconds
    return out


def node_gpu_free_memory(doc: Mapping[str, Any]) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(node_id, gpu_index): (freeMem MB, cudaUtilization %)}`` from a metrics document.

    Called by the fleet view when metrics arrive. GPUs without ``freeMem`` are left out (no live
    memory figure for them); a missing ``cudaUtilization`` reads as 0. Malformed entries are
    skipped, since stored documents were validated on the way in.
    """
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for node in doc.get("nodes") or []:
        if not isinstance(node, Mapping) or not isinstance(node.get("id"), str):
            continue
        for gpu in node.get("gpus") or []:
            if not isinstance(gpu, Mapping):
                continue
            idx, free = gpu.get("gpu_id"), gpu.get("freeMem")
            if isinstance(idx, int) and isinstance(free, int | float):
                util = gpu.get("cudaUtilization", 0)
                out[(node["id"], idx)] = (float(free), float(util or 0))
    return out
