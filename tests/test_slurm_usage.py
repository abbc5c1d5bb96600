"""Slurm's live use becomes a metrics document: from recorded sinfo output, and from the real Slurm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apportion.adapters.slurm.adapter import SlurmAdapter
from apportion.adapters.slurm.parse_nodes import parse_sinfo_nodes
from apportion.adapters.slurm.usage import SlurmUsageCollector, usage_document
from apportion.registry.metrics import validate_metrics_document
from tests import slurm_env
from tests.conftest import Running
from tests.test_slurm_jobs import register_slurm

slurm = slurm_env.slurm
DATA = Path(__file__).parent / "data" / "slurm"

CLUSTER: dict[str, Any] = {
    "id": "hpc",
    "nodes": {"nodeData": [{"id": "n1"}, {"id": "n2"}, {"id": "n3"}, {"id": "gone"}]},
}


def test_usage_document_from_recorded_sinfo() -> None:
    nodes = parse_sinfo_nodes((DATA / "sinfo_busy.json").read_text())
    doc = validate_metrics_document(usage_document(CLUSTER, nodes), cluster_id="hpc")
    by_id = {n["id"]: n for n in doc["nodes"]}
    # recorded: n1 and n2 run 1 of 4 GPUs each, n3 all 4; "gone" is not in Slurm
    assert {k: v["gpu"]["gpusInUse"] for k, v in by_id.items()} == {"n1": 1, "n2": 1, "n3": 4}
    assert all(v["gpu"]["count"] == 4 for v in by_id.values())
    assert by_id["n1"]["vcpu"]["load1m"] == 1.79  # sinfo's cpu_load 179 is in hundredths
    assert not by_id["n1"].get("gpus")  # Slurm 22.05 does not say which indices are in use


async def test_collector_pushes_the_real_clusters_use(
    running: Running, slurm: slurm_env.SlurmCluster
) -> None:
    await register_slurm(running, slurm)
    assert running.server.context is not None
    collector = SlurmUsageCollector(running.server.context.registry, SlurmAdapter())
    assert await collector.collect() == 1
    async with running.http.get(f"{running.url}/cluster/hpc") as response:
        doc = (await response.json())["data"]
    assert doc["source"] == "slurm" and doc["stale"] is False
    assert sorted(n["id"] for n in doc["nodes"]) == list(slurm.nodes)
    assert all(n["gpu"]["count"] == 4 for n in doc["nodes"])
