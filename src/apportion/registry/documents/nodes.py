"""The nodes of a cluster document: ``nodes.count``/``nodeData`` and each node's id, GPUs
(entries, ``memory``/``modelNames`` aggregates, NVLink topology), vCPUs, memory and labels.

Called by :func:`apportion.registry.documents.cluster.validate_cluster_document` with the document's
copy, which it normalises in place (defaults filled in, node GPU aggregates computed, model
names sorted and distinct). Problems go to the caller's
:class:`~apportion.registry.fields.FieldErrors`.
"""

from __future__ import annotations

from typing import Any

from apportion.registry.documents.aggregates import COMPUTE_HINT
from apportion.registry.documents.ids import check_id_value
from apportion.registry.fields import FieldErrors, amount, count, fmt, obj, same, str_list, text


def check_nodes(out: dict[str, Any], path: str, errs: FieldErrors) -> list[dict[str, Any]] | None:
    """The validated nodes, or None when any of them is invalid (aggregates are then skipped)."""
    if "nodes" not in out:
        out["nodes"] = {"count": 0, "nodeData": []}
        return []
    p = f"{path}.nodes"
    nodes = obj(out["nodes"], p, errs)
    if nodes is None:
        return None
    data = nodes.get("nodeData")
    if data is None:
        data = nodes["nodeData"] = []
    if not isinstance(data, list):
        errs.add(f"{p}.nodeData", f"{p}.nodeData must be a list of node objects")
        return None
    if "count" in nodes:
        n = count(nodes["count"], f"{p}.count", errs)
        if n is not None and data and n != len(data):
            errs.add(
                f"{p}.count",
                f"{p}.count is {n} but nodeData lists {len(data)} "
                f"node{'' if len(data) == 1 else 's'}; {COMPUTE_HINT}",
            )
    else:
        nodes["count"] = len(data)
    before = len(errs)
    seen: dict[str, int] = {}
    for i, node in enumerate(data):
        np_ = f"{p}.nodeData[{i}]"
        _check_node(node, np_, errs)
        nid = node.get("id") if isinstance(node, dict) else None
        if isinstance(nid, str):
            if nid in seen:
                errs.add(
                    f"{np_}.id",
                    f"{np_}.id {nid!r} is already used by {p}.nodeData[{seen[nid]}]; "
                    "node ids must be unique in a cluster",
                )
            else:
                seen[nid] = i
    return None if len(errs) > before else data


def _check_node(node: Any, p: str, errs: FieldErrors) -> None:
    n = obj(node, p, errs)
    if n is None:
        return
    if "id" not in n:
        errs.add(f"{p}.id", f"{p}.id is required: the node's id, unique in the cluster")
    else:
        check_id_value(n["id"], f"{p}.id", errs)
    if "gpus" in n:
        _check_node_gpus(n["gpus"], f"{p}.gpus", errs)
    else:
        n["gpus"] = {"count": 0, "memory": 0, "modelNames": [], "features": []}
    if "vcpus" in n:
        vcpus = obj(n["vcpus"], f"{p}.vcpus", errs)
        if vcpus is not None:
            if "count" in vcpus:
                count(vcpus["count"], f"{p}.vcpus.count", errs)
            else:
                errs.add(f"{p}.vcpus.count", f"{p}.vcpus.count is required (the node's vCPUs)")
    else:
        n["vcpus"] = {"count": 0}
    if "memory" in n:
        amount(n["memory"], f"{p}.memory", errs)
    else:
        n["memory"] = 0
    if "swap" in n:
        amount(n["swap"], f"{p}.swap", errs)
    for key in ("storage", "network"):
        if key in n:
            obj(n[key], f"{p}.{key}", errs)
    if "labels" in n:
        labels = obj(n["labels"], f"{p}.labels", errs)
        for key, value in (labels or {}).items():
            if not isinstance(value, str):
                errs.add(f"{p}.labels.{key}", f"{p}.labels.{key} must be a string")


def _check_node_gpus(value: Any, p: str, errs: FieldErrors) -> None:
    g = obj(value, p, errs)
    if g is None:
        return
    entries = g.get("gpus")
    if entries is not None and not isinstance(entries, list):
        errs.add(f"{p}.gpus", f"{p}.gpus must be a list of {{modelName, memory}} objects")
        return
    if "count" in g:
        n = count(g["count"], f"{p}.count", errs)
        if n is None:
            return
    else:
        n = g["count"] = len(entries or [])
    if "features" in g:
        str_list(g["features"], f"{p}.features", errs)
    else:
        g["features"] = []
    _check_topology(g, n, p, errs)
    expanded = _check_gpu_entries(g, entries, n, p, errs)
    if expanded is None:
        return
    total = sum(e["memory"] for e in expanded)
    if "memory" in g:
        stated = amount(g["memory"], f"{p}.memory", errs)
        if stated is not None and not same(stated, total):
            errs.add(
                f"{p}.memory",
                f"{p}.memory is {fmt(stated)} but the GPUs add up to {fmt(total)}; {COMPUTE_HINT}",
            )
    else:
        g["memory"] = total
    names = sorted({e["modelName"] for e in expanded})
    if "modelNames" in g:
        stated_names = str_list(g["modelNames"], f"{p}.modelNames", errs)
        if stated_names is not None and set(stated_names) != set(names):
            errs.add(
                f"{p}.modelNames",
                f"{p}.modelNames is {stated_names} but the GPUs are {names}; {COMPUTE_HINT}",
            )
    g["modelNames"] = names


def _check_gpu_entries(
    g: dict[str, Any], entries: list[Any] | None, n: int, p: str, errs: FieldErrors
) -> list[dict[str, Any]] | None:
    """The per-GPU entries expanded to ``n`` items, or None when they are invalid."""
    if entries is None:
        if n > 0:
            errs.add(
                f"{p}.gpus",
                f"{p}.gpus is required when count is {n}: list the GPUs in index order as "
                "{modelName, memory} objects, or give one entry standing for all of them",
            )
            return None
        g["gpus"] = []
        return []
    if len(entries) != n and not (len(entries) == 1 and n > 0):
        errs.add(
            f"{p}.gpus",
            f"{p}.gpus lists {len(entries)} GPUs but count is {n}; list {n} entries (one per "
            "GPU, in index order) or one entry standing for all of them",
        )
        return None
    before = len(errs)
    for i, entry in enumerate(entries):
        ep = f"{p}.gpus[{i}]"
        e = obj(entry, ep, errs)
        if e is None:
            continue
        for key, check in (("modelName", text), ("memory", amount)):
            if key in e:
                check(e[key], f"{ep}.{key}", errs)
            else:
                errs.add(f"{ep}.{key}", f"{ep}.{key} is required")
    if len(errs) > before:
        return None
    return entries if len(entries) == n else entries * n


def _check_topology(g: dict[str, Any], n: int, p: str, errs: FieldErrors) -> None:
    if "topology" not in g:
        return
    tp = f"{p}.topology"
    topo = obj(g["topology"], tp, errs)
    if topo is None or "nvlinkDomains" not in topo:
        return
    dp = f"{tp}.nvlinkDomains"
    domains = topo["nvlinkDomains"]
    if not isinstance(domains, list):
        errs.add(dp, f"{dp} must be a list of lists of GPU indices")
        return
    owner: dict[int, int] = {}
    for d, domain in enumerate(domains):
        if not isinstance(domain, list) or not domain:
            errs.add(f"{dp}[{d}]", f"{dp}[{d}] must be a non-empty list of GPU indices")
            continue
        for k, index in enumerate(domain):
            ip = f"{dp}[{d}][{k}]"
            idx = count(index, ip, errs)
            if idx is None:
                continue
            if idx >= n:
                errs.add(ip, f"{ip} is GPU {idx} but the node has {n} GPUs (indices 0..{n - 1})")
            elif idx in owner:
                errs.add(
                    ip,
                    f"{ip} is GPU {idx}, already in {dp}[{owner[idx]}]; NVLink domains must "
                    "not overlap",
                )
            else:
                owner[idx] = d
