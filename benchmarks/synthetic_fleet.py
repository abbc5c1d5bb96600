"""The benchmark's synthetic fleet: ``nodes`` nodes of 8 GPUs in clusters of ``per_cluster``.

Used by ``serve_fleet.py`` (registered in the server process) and by ``allocation.py``
(the same documents in a :class:`~apportion.registry.fleet.FleetView` for the in-process
kernel and policy timings), so both measure over the same arrays.
"""

from __future__ import annotations

from typing import Any

GPUS_PER_NODE = 8
MODELS = (("H100", 81920), ("A100", 40960))
DOMAINS = [[0, 1, 2, 3], [4, 5, 6, 7]]


def fleet_documents(nodes: int, per_cluster: int = 100) -> list[dict[str, Any]]:
    """Cluster documents (CONTRACTS §4) totalling ``nodes`` nodes × 8 GPUs, all ``live``.

    Cluster ``bench-c0000`` … each holds ``per_cluster`` nodes (the last one the rest);
    clusters alternate H100 / A100 nodes with two NVLink domains of four GPUs."""
    docs = []
    for ci, start in enumerate(range(0, nodes, per_cluster)):
        count = min(per_cluster, nodes - start)
        model, memory = MODELS[ci % len(MODELS)]
        node_data = [
            {
                "id": f"n{i:05d}",
                "gpus": {
                    "count": GPUS_PER_NODE,
                    "gpus": [{"modelName": model, "memory": memory}],
                    "features": ["nvlink"],
                    "topology": {"nvlinkDomains": DOMAINS},
                },
                "vcpus": {"count": 96},
                "memory": 1_048_576,
                "labels": {"rack": f"r{i // 16}"},
            }
            for i in range(start, start + count)
        ]
        docs.append(
            {
                "id": f"bench-c{ci:04d}",
                "regionId": "bench-1",
                "status": "live",
                "nodes": {"count": count, "nodeData": node_data},
                "config": {"scheduler": {"type": "local"}},
                "tags": ["gpu", "bench"],
                "clusterMetadata": {"name": f"bench-c{ci:04d}", "owner": "bench"},
            }
        )
    return docs
