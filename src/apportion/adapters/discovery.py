"""Clusters described by their scheduler: a Slurm cluster registered without ``nodeData``.

CONTRACTS §4: "a Slurm cluster registered with no ``nodeData`` is discovered from Slurm
itself". The REST route calls :func:`complete_from_scheduler` before the registry validates
the document, so what is stored is an ordinary cluster document with its nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apportion.adapters.base import Adapter, AdapterError
from apportion.errors import InvalidRequest


async def complete_from_scheduler(body: Any, adapters: Mapping[str, Adapter]) -> Any:
    """``body`` with ``nodes`` filled in from Slurm when it is a Slurm cluster without nodes."""
    if not isinstance(body, dict):
        return body
    config = body.get("config")
    scheduler = config.get("scheduler") if isinstance(config, dict) else None
    if not isinstance(scheduler, dict) or scheduler.get("type") != "slurm":
        return body
    nodes = body.get("nodes")
    if isinstance(nodes, dict) and nodes.get("nodeData"):
        return body
    adapter = adapters.get("slurm")
    path = "body.config.scheduler"
    if adapter is None:
        raise InvalidRequest(
            "this Slurm cluster has no nodeData and cannot be discovered: the Slurm tools "
            "(sbatch, sinfo) are not installed where the server runs; list the nodes in "
            "nodes.nodeData or install Slurm's client tools",
            path=path,
        )
    try:
        node_data = await adapter.discover(scheduler)
    except AdapterError as exc:
        raise InvalidRequest(
            f"could not discover the Slurm cluster: {exc.message}", path=path
        ) from None
    if not node_data:
        raise InvalidRequest(
            f"Slurm reports no nodes in partition {scheduler.get('partition')!r}; check the "
            "partition name (GET /scheduler/partitions lists them)",
            path=f"{path}.partition",
        )
    return {**body, "nodes": {"count": len(node_data), "nodeData": node_data}}
