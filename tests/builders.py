"""Fixture builders: cluster and metrics documents (CONTRACTS §4), seed-format cluster_data,
and fleet views. Shared by the tests of several modules; keep it general.

    node("n1", gpus=8, model="H100", memory=81920, domains=[[0, 1, 2, 3], [4, 5, 6, 7]])
    cluster("c1", [node(...), ...])             # aggregates computed
    make_cluster("c1", nodes=4, gpus=8)          # N nodes x G GPUs, ids n0..n3
    metrics("c1", {("n0", 0): 1024.0})           # per-GPU freeMem
    cluster_data(doc1, doc2, metrics={"c1": m})  # input_data["cluster_data"]
    fleet_of(doc1, doc2)                         # a FleetView
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apportion.engine.decisions import Placement
from apportion.registry.fleet import FleetView


def node(
    node_id: str,
    *,
    gpus: int = 8,
    model: str = "H100",
    memory: int = 81920,
    models: Sequence[str] | None = None,
    memories: Sequence[int] | None = None,
    domains: Sequence[Sequence[int]] | None = None,
    vcpus: int = 96,
    memory_mb: int = 1048576,
    labels: Mapping[str, str] | None = None,
    alike_form: bool = True,
) -> dict[str, Any]:
    """One node. ``models`` / ``memories`` give per-GPU values (index order); otherwise all
    GPUs are ``model`` with ``memory`` MB, written as one entry when ``alike_form``."""
    names = list(models) if models is not None else [model] * gpus
    mems = list(memories) if memories is not None else [memory] * gpus
    assert len(names) == gpus and len(mems) == gpus, "models/memories need one entry per GPU"
    entries = [{"modelName": n, "memory": m} for n, m in zip(names, mems, strict=True)]
    alike = len({(e["modelName"], e["memory"]) for e in entries}) <= 1
    gpu_block: dict[str, Any] = {
        "count": gpus,
        "memory": sum(mems),
        "modelNames": sorted(set(names)),
        "features": ["nvlink"] if domains else [],
    }
    if gpus:
        gpu_block["gpus"] = entries[:1] if alike and alike_form else entries
    if domains is not None:
        gpu_block["topology"] = {"nvlinkDomains": [list(d) for d in domains]}
    doc: dict[str, Any] = {
        "id": node_id,
        "gpus": gpu_block,
        "vcpus": {"count": vcpus},
        "memory": memory_mb,
    }
    if labels is not None:
        doc["labels"] = dict(labels)
    return doc


def cluster(cluster_id: str, nodes: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """A cluster document with the aggregates computed from ``nodes``."""
    data = [dict(n) for n in nodes]
    doc: dict[str, Any] = {
        "id": cluster_id,
        "regionId": "eu-1",
        "status": "live",
        "nodes": {"count": len(data), "nodeData": data},
        "gpus": {
            "count": sum(n["gpus"]["count"] for n in data),
            "memory": sum(n["gpus"]["memory"] for n in data),
        },
        "vcpus": {"count": sum(n["vcpus"]["count"] for n in data)},
        "memory": sum(n["memory"] for n in data),
        "config": {"scheduler": {"type": "local"}},
        "tags": ["gpu"],
        "reputation": 1.0,
    }
    doc.update(extra)
    return doc


def node_ids(count: int, prefix: str = "n") -> list[str]:
    """Zero-padded ids whose string order is their numeric order."""
    width = len(str(max(count - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def make_cluster(
    cluster_id: str,
    nodes: int = 2,
    gpus: int = 8,
    *,
    prefix: str = "n",
    domains: Sequence[Sequence[int]] | None = None,
    **node_kwargs: Any,
) -> dict[str, Any]:
    """A cluster of ``nodes`` identical nodes with ``gpus`` GPUs each."""
    return cluster(
        cluster_id,
        [node(n, gpus=gpus, domains=domains, **node_kwargs) for n in node_ids(nodes, prefix)],
    )


def metrics(
    cluster_id: str,
    free: Mapping[tuple[str, int], float],
    util: Mapping[tuple[str, int], float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A metrics document with per-GPU ``freeMem`` (and ``cudaUtilization``) entries."""
    util = util or {}
    per_node: dict[str, list[dict[str, Any]]] = {}
    for (nid, idx), value in sorted(free.items()):
        per_node.setdefault(nid, []).append(
            {"gpu_id": idx, "freeMem": value, "cudaUtilization": util.get((nid, idx), 0.0)}
        )
    doc: dict[str, Any] = {
        "clusterId": cluster_id,
        "timestamp": "2025-01-01T00:00:00Z",
        "nodes": [{"id": nid, "gpus": gpus} for nid, gpus in per_node.items()],
    }
    doc.update(extra)
    return doc


def cluster_data(
    *docs: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Seed-format ``input_data["cluster_data"]``."""
    metrics = metrics or {}
    return {d["id"]: {"data": d, "cluster_metrics": metrics.get(d["id"])} for d in docs}


def fleet_of(*docs: Mapping[str, Any]) -> FleetView:
    """A fleet view over the documents, in the given order."""
    fleet = FleetView()
    for d in docs:
        fleet.set_cluster(d)
    return fleet


def placements_of(gpus: Sequence[tuple[str, str, str]], indices: set[int]) -> tuple[Placement, ...]:
    """The placements of the GPUs ``gpus[i]`` (``(cluster, node, gpu)``) for ``i`` in
    ``indices``, one per node, in node order."""
    by_node: dict[tuple[str, str], list[str]] = {}
    for i in sorted(indices):
        cluster, node, gpu = gpus[i]
        by_node.setdefault((cluster, node), []).append(gpu)
    return tuple(Placement(c, n, tuple(g)) for (c, n), g in sorted(by_node.items()))
