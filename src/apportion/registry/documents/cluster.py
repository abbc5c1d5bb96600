"""Cluster documents of the registry (CONTRACTS §4): validation, normalisation, readers.

The REST layer calls :func:`validate_cluster_document` on every ``POST /clusters`` and
``PUT /clusters/{id}`` body before storing it; the fleet view reads stored documents with
:func:`expand_node_gpus`, :func:`nvlink_domains` and :func:`scheduler_type`.

This module checks the document's top level and ties the parts together; the parts live beside
it: ids in :mod:`~apportion.registry.documents.ids`, nodes in
:mod:`~apportion.registry.documents.nodes`, cluster aggregates in
:mod:`~apportion.registry.documents.aggregates`, readers in
:mod:`~apportion.registry.documents.readers` (all re-exported here).

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
from collections.abc import Mapping
from typing import Any

from apportion.errors import InvalidRequest
from apportion.registry.documents.aggregates import check_cluster_aggregates
from apportion.registry.documents.ids import check_cluster_id
from apportion.registry.documents.nodes import check_nodes
from apportion.registry.documents.readers import (
    SCHEDULER_TYPE,
    SCHEDULER_TYPE_WORDS,
)
from apportion.registry.fields import FieldErrors, amount, obj, str_list, text


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
    check_cluster_id(out, path, expected_id, errs)
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
    nodes = check_nodes(out, path, errs)
    check_cluster_aggregates(out, nodes, path, errs)
    errs.raise_if_any()
    return out


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
    if kind is not None and SCHEDULER_TYPE.fullmatch(kind) is None:
        errs.add(p, f"{p} is {kind!r}; use {SCHEDULER_TYPE_WORDS}")
