"""Cluster documents of the registry (CONTRACTS §4): validation, normalisation, readers.

The REST layer calls :func:`validate_cluster_document` on every ``POST /clusters`` and
``PUT /clusters/{id}`` body before storing it; the fleet view reads stored documents with
:func:`expand_node_gpus`, :func:`nvlink_domains` and :func:`scheduler_type`.

Choices this module makes where the contract is silent (documented in ``docs/``):

- ``reputation`` must be a finite number between 0 and 1 inclusive.
- A node without ``gpus`` gets ``{"count": 0, "memory": 0, "modelNames": [], "features": []}``;
  without ``vcpus`` it gets ``{"count": 0}``; without ``memory`` it gets ``0``: a resource that is
  not declared is never offered.
- ``gpus.count`` of a node may be left out when ``gpus.gpus`` lists one entry per GPU.
- ``modelNames`` is checked as a set and stored sorted and distinct.
- A missing ``nodes`` becomes ``{"count": 0, "nodeData": []}``; a missing ``nodeData`` becomes
  ``[]`` (a Slurm cluster discovered later); ``nodes.count`` defaults to ``len(nodeData)``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from apportion.errors import InvalidRequest
from apportion.registry.fields import FieldErrors, amount, count, fmt, obj, same, str_list, text

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Cluster and node ids (full match)."""

SCHEDULER_TYPES = ("local", "slurm")
"""Values of ``config.scheduler.type``; the adapter that runs jobs on the cluster."""

_CLUSTER_AGGREGATES: tuple[tuple[str | None, str, bool], ...] = (
    # (group or None for top level, key, is_count)
    ("gpus", "count", True),
    ("gpus", "memory", False),
    ("vcpus", "count", True),
    (None, "memory", False),
)

_COMPUTE_HINT = "fix it or leave it out to have it computed"


def validate_cluster_document(
    doc: Any, *, path: str = "body", expected_id: str | None = None
) -> dict[str, Any]:
    """Validate a cluster document and return its normalised form (a new plain dict).

    Called by the REST layer before a cluster is stored (``expected_id`` is the URL's id on
    ``PUT /clusters/{id}``), and by the local and Slurm collectors on what they build.
    Aggregates (node ``gpus.memory``/``modelNames``; cluster ``gpus``, ``vcpus``, ``memory``)
    are computed when absent and checked when present. Unknown keys are kept as they are.

    Raises :class:`InvalidRequest` whose ``path`` names the first bad field (e.g.
    ``body.nodes.nodeData[1].gpus.gpus[0].memory``) and whose ``details["errors"]`` lists every
    problem found as ``{"path", "message"}``.
    """
    if not isinstance(doc, Mapping):
        raise InvalidRequest(f"{path} must be a JSON object (a cluster document)", path=path)
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    errs = FieldErrors()
    _check_id(out, path, expected_id, errs)
    for key in ("status", "regionId"):
        if key in out:
            text(out[key], f"{path}.{key}", errs)
    if "reputation" in out:
        amount(out["reputation"], f"{path}.reputation", errs, most=1)
    if "tags" in out:
        str_list(out["tags"], f"{path}.tags", errs)
    for key in ("clusterMetadata", "storage", "network"):
        if key in out:
            obj(out[key], f"{path}.{key}", errs)
    if "swap" in out:
        amount(out["swap"], f"{path}.swap", errs)
    _check_config(out, path, errs)
    nodes = _check_nodes(out, path, errs)
    _check_cluster_aggregates(out, nodes, path, errs)
    errs.raise_if_any()
    return out


def _check_id(out: dict[str, Any], path: str, expected_id: str | None, errs: FieldErrors) -> None:
    if "id" not in out:
        if expected_id is not None:
            out["id"] = expected_id
            return
        errs.add(f"{path}.id", f"{path}.id is required: the cluster's unique id")
        return
    cid = out["id"]
    if _check_id_value(cid, f"{path}.id", errs) and expected_id is not None and cid != expected_id:
        errs.add(
            f"{path}.id",
            f"{path}.id is {cid!r} but the URL names {expected_id!r}; make them equal or leave "
            "the id out",
        )


def _check_id_value(value: Any, p: str, errs: FieldErrors) -> bool:
    if text(value, p, errs) is None:
        return False
    if not ID_PATTERN.fullmatch(value):
        errs.add(
            p,
            f"{p} {value!r} is not a valid id: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
        return False
    return True


def _check_config(out: dict[str, Any], path: str, errs: FieldErrors) -> None:
    if "config" not in out:
        return
    cfg = obj(out["config"], f"{path}.config", errs)
    if cfg is None or "scheduler" not in cfg:
        return
    sched = obj(cfg["scheduler"], f"{path}.config.scheduler", errs)
    if sched is None or "type" not in sched:
        return
    p = f"{path}.config.scheduler.type"
    kind = text(sched["type"], p, errs)
    if kind is not None and kind not in SCHEDULER_TYPES:
        errs.add(p, f"{p} is {kind!r}; use one of: {', '.join(SCHEDULER_TYPES)}")


def _check_nodes(out: dict[str, Any], path: str, errs: FieldErrors) -> list[dict[str, Any]] | None:
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
                f"{p}.count is {n} but nodeData lists {len(data)} nodes; {_COMPUTE_HINT}",
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
        _check_id_value(n["id"], f"{p}.id", errs)
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
                f"{p}.memory is {fmt(stated)} but the GPUs add up to {fmt(total)}; {_COMPUTE_HINT}",
            )
    else:
        g["memory"] = total
    names = sorted({e["modelName"] for e in expanded})
    if "modelNames" in g:
        stated_names = str_list(g["modelNames"], f"{p}.modelNames", errs)
        if stated_names is not None and set(stated_names) != set(names):
            errs.add(
                f"{p}.modelNames",
                f"{p}.modelNames is {stated_names} but the GPUs are {names}; {_COMPUTE_HINT}",
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


def _check_cluster_aggregates(
    out: dict[str, Any], nodes: list[dict[str, Any]] | None, path: str, errs: FieldErrors
) -> None:
    """Type-check stated aggregates; with valid nodes, compute absent ones and check the rest."""
    for group, key, is_count in _CLUSTER_AGGREGATES:
        container: dict[str, Any] | None = out
        p = f"{path}.{key}"
        if group is not None:
            p = f"{path}.{group}.{key}"
            if group in out:
                container = obj(out[group], f"{path}.{group}", errs)
            elif nodes:
                container = out[group] = {}
            else:
                container = None
        if container is None:
            continue
        computed = (
            0
            if nodes is None
            else sum((node[group][key] if group is not None else node[key]) for node in nodes)
        )
        if key in container:
            stated = (count if is_count else amount)(container[key], p, errs)
            if stated is not None and nodes and not same(stated, computed):
                errs.add(
                    p,
                    f"{p} is {fmt(stated)} but the nodes add up to {fmt(computed)}; "
                    + _COMPUTE_HINT,
                )
        elif nodes:
            container[key] = computed


def expand_node_gpus(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The node's GPUs as ``gpus.count`` dicts ``{"modelName", "memory"}`` in index order.

    Called by the fleet view on validated documents; the one-entry-for-all form is expanded.
    Raises :class:`InvalidRequest` if the node's GPU list does not fit its count.
    """
    gpus = node.get("gpus") or {}
    entries = list(gpus.get("gpus") or [])
    n = int(gpus.get("count", len(entries)))
    if n == 0:
        return []
    if len(entries) == 1:
        entries = entries * n
    if len(entries) != n:
        raise InvalidRequest(
            f"node {node.get('id')!r} lists {len(entries)} GPUs but its count is {n}",
            path="gpus.gpus",
        )
    return [{"modelName": e["modelName"], "memory": e["memory"]} for e in entries]


def nvlink_domains(node: Mapping[str, Any]) -> list[list[int]]:
    """The node's NVLink domains from ``gpus.topology.nvlinkDomains`` ([] without topology)."""
    topology = (node.get("gpus") or {}).get("topology") or {}
    return [list(domain) for domain in topology.get("nvlinkDomains") or []]


def scheduler_type(cluster: Mapping[str, Any]) -> str:
    """``config.scheduler.type`` of a cluster document, ``"local"`` when absent.

    Called when a job is dispatched to pick the adapter. Raises :class:`InvalidRequest`
    for a value other than ``local``/``slurm`` (a validated document never has one).
    """
    scheduler = (cluster.get("config") or {}).get("scheduler") or {}
    kind = scheduler.get("type", "local")
    if kind not in SCHEDULER_TYPES:
        raise InvalidRequest(
            f"config.scheduler.type is {kind!r}; use one of: {', '.join(SCHEDULER_TYPES)}",
            path="config.scheduler.type",
        )
    return str(kind)
