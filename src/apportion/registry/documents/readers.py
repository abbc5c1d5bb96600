"""Readers of stored (validated) cluster documents: a node's GPUs and NVLink domains, and the
cluster's scheduler type.

Called by the fleet view (:mod:`apportion.registry.fleet_structure`) when it builds its arrays,
and when a job is dispatched to pick the adapter. They read; they never modify the document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from apportion.errors import InvalidRequest

SCHEDULER_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
"""A ``config.scheduler.type``: the name of the adapter that runs jobs on the cluster —
``local``, ``slurm`` or a plugin's (``GET /plugins``; docs/adapters.md)."""
SCHEDULER_TYPE_WORDS = (
    "an adapter's name (local, slurm, or a plugin's: lowercase letters, digits, - and _)"
)


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
    for a value that is no adapter's name (a validated document never has one).
    """
    scheduler = (cluster.get("config") or {}).get("scheduler") or {}
    kind = scheduler.get("type", "local")
    if not isinstance(kind, str) or SCHEDULER_TYPE.fullmatch(kind) is None:
        raise InvalidRequest(
            f"config.scheduler.type is {kind!r}; use {SCHEDULER_TYPE_WORDS}",
            path="config.scheduler.type",
        )
    return kind
