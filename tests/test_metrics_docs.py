"""Metrics documents: validation, computed node GPU aggregates, staleness, fleet-view reader."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.registry.metrics import (
    mark_staleness,
    node_gpu_free_memory,
    validate_metrics_document,
)


def gpu(i: int, used: float, free: float, mem_util: float, cuda: float) -> dict[str, Any]:
    return {
        "gpu_id": i,
        "usedMem": used,
        "freeMem": free,
        "totalMem": used + free,
        "memUtilization": mem_util,
        "cudaUtilization": cuda,
        "powerUtilization": 250,
        "temperature": 30,
    }


# CONTRACTS §4's metrics example, with its one GPU entry.
CONTRACT_METRICS: dict[str, Any] = {
    "clusterId": "c1",
    "timestamp": "2026-01-31T12:00:00Z",
    "cluster": {"gpu": {"totalFreeMem": 0, "count": 8}, "vcpu": {"load1m": 0.4}},
    "nodes": [
        {
            "id": "n1",
            "memory": {"freeMem": 0, "usedMem": 0, "averageUtil": 0},
            "vcpu": {"load1m": 0, "load5m": 0, "load15m": 0},
            "gpu": {
                "totalUsedMem": 0,
                "totalFreeMem": 0,
                "totalMem": 0,
                "avgMemUtilization": 0,
                "avgCudaUtilization": 0,
                "count": 8,
            },
            "gpus": [
                {
                    "gpu_id": 0,
                    "usedMem": 0,
                    "freeMem": 81920,
                    "totalMem": 81920,
                    "memUtilization": 0,
                    "cudaUtilization": 0,
                    "powerUtilization": 0,
                    "temperature": 30,
                }
            ],
        }
    ],
}


def metrics() -> dict[str, Any]:
    return copy.deepcopy(CONTRACT_METRICS)


def refused(doc: Any, cluster_id: str = "c1") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        validate_metrics_document(doc, cluster_id=cluster_id)
    return info.value


def test_contract_example_validates_unchanged() -> None:
    doc = metrics()
    doc["nodes"][0]["x-extra"] = {"kept": True}
    out = validate_metrics_document(doc, cluster_id="c1")
    assert out == doc
    assert out is not doc and out["nodes"] is not doc["nodes"]


def test_cluster_id_and_timestamp_are_set_when_absent() -> None:
    doc = metrics()
    del doc["clusterId"], doc["timestamp"]
    before = datetime.now(UTC)
    out = validate_metrics_document(doc, cluster_id="c7")
    assert out["clusterId"] == "c7"
    stamp = datetime.fromisoformat(out["timestamp"])
    assert stamp.tzinfo is not None
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)


def test_cluster_id_mismatch_is_refused() -> None:
    err = refused(metrics(), cluster_id="c2")
    assert err.details["path"] == "body.clusterId"
    assert "'c1'" in err.message and "'c2'" in err.message


@pytest.mark.parametrize("stamp", ["yesterday", "2026-13-01T00:00:00", 1700000000, None])
def test_bad_timestamp_is_refused(stamp: Any) -> None:
    doc = metrics()
    doc["timestamp"] = stamp
    assert refused(doc).details["path"] == "body.timestamp"


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("nodes.0.memory", "freeMem", -1),
        ("nodes.0.memory", "averageUtil", 100.5),  # a percentage
        ("nodes.0.vcpu", "load1m", -0.1),
        ("nodes.0.gpus.0", "freeMem", -5),
        ("nodes.0.gpus.0", "cudaUtilization", 101),
        ("nodes.0.gpus.0", "usedMem", "lots"),
        ("nodes.0.gpus.0", "gpu_id", -1),
        ("nodes.0.gpus.0", "gpu_id", True),
        ("nodes.0.gpu", "count", 1.5),
        ("nodes.0.gpu", "avgCudaUtilization", -3),
    ],
)
def test_out_of_range_numbers_are_refused(where: str, key: str, value: Any) -> None:
    doc = metrics()
    target: Any = doc
    for part in where.split("."):
        target = target[int(part)] if part.isdigit() else target[part]
    target[key] = value
    path = "body." + where.replace(".0", "[0]") + "." + key
    assert refused(doc).details["path"] == path


def test_path_names_the_gpu_position_in_the_list() -> None:
    doc = metrics()
    doc["nodes"][0]["gpus"] = [gpu(i, 0, 100, 0, 0) for i in range(4)]
    doc["nodes"][0]["gpus"][3]["freeMem"] = -1
    assert refused(doc).details["path"] == "body.nodes[0].gpus[3].freeMem"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "place", ["cluster.gpu.totalFreeMem", "nodes.0.gpus.0.temperature", "nodes.0.x-unknown"]
)
def test_non_finite_numbers_are_refused_anywhere(bad: float, place: str) -> None:
    doc = metrics()
    *parents, last = place.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = bad
    err = refused(doc)
    assert err.details["path"] == "body." + place.replace(".0", "[0]")
    assert len(err.details["errors"]) == 1, "a non-finite number is reported once"


@pytest.mark.parametrize(
    ("bad_node", "path"),
    [
        ({"memory": {}}, "body.nodes[0].id"),
        ({"id": 3}, "body.nodes[0].id"),
        ({"id": "n1", "gpus": {}}, "body.nodes[0].gpus"),
        ({"id": "n1", "gpus": [{"freeMem": 1}]}, "body.nodes[0].gpus[0].gpu_id"),
        ({"id": "n1", "gpus": [{"gpu_id": 0}, {"gpu_id": 0}]}, "body.nodes[0].gpus[1].gpu_id"),
        ({"id": "n1", "memory": []}, "body.nodes[0].memory"),
        ("n1", "body.nodes[0]"),
    ],
)
def test_bad_node_shapes_are_refused(bad_node: Any, path: str) -> None:
    assert refused({"nodes": [bad_node]}).details["path"] == path


def test_duplicate_node_ids_are_refused() -> None:
    err = refused({"nodes": [{"id": "n1"}, {"id": "n1"}]})
    assert err.details["path"] == "body.nodes[1].id"


def test_nodes_must_be_a_list_and_document_an_object() -> None:
    assert refused({"nodes": {}}).details["path"] == "body.nodes"
    assert refused([]).details["path"] == "body"


def test_node_gpu_aggregates_are_computed_when_absent() -> None:
    doc = {
        "nodes": [
            {
                "id": "n1",
                "gpus": [
                    gpu(0, used=1000, free=80920, mem_util=10, cuda=50),
                    gpu(1, used=3000, free=78920, mem_util=30, cuda=100),
                    gpu(2, used=2000, free=79920, mem_util=20, cuda=0),
                ],
            }
        ]
    }
    agg = validate_metrics_document(doc, cluster_id="c1")["nodes"][0]["gpu"]
    assert agg["totalUsedMem"] == 6000  # 1000 + 3000 + 2000
    assert agg["totalFreeMem"] == 239760  # 80920 + 78920 + 79920
    assert agg["totalMem"] == 245760  # used + free = 81920 per GPU; 3 × 81920
    assert agg["avgMemUtilization"] == pytest.approx(20)  # (10 + 30 + 20) / 3
    assert agg["avgCudaUtilization"] == pytest.approx(50)  # (50 + 100 + 0) / 3
    assert agg["count"] == 3


def test_stated_aggregates_are_kept_and_missing_ones_filled() -> None:
    doc = {"nodes": [{"id": "n1", "gpu": {"totalFreeMem": 7}, "gpus": [gpu(0, 10, 20, 1, 2)]}]}
    agg = validate_metrics_document(doc, cluster_id="c1")["nodes"][0]["gpu"]
    assert agg["totalFreeMem"] == 7  # stated: a measurement, kept
    assert agg["totalUsedMem"] == 10 and agg["count"] == 1


def test_node_without_gpus_gets_empty_list_and_zero_aggregates() -> None:
    node = validate_metrics_document({"nodes": [{"id": "cpu"}]}, cluster_id="c")["nodes"][0]
    assert node["gpus"] == []
    assert node["gpu"]["count"] == 0 and node["gpu"]["avgCudaUtilization"] == 0


@pytest.mark.parametrize(
    ("received", "now", "ttl", "stale", "age"),
    [
        (100.0, 100.0, 30.0, False, 0.0),
        (100.0, 129.0, 30.0, False, 29.0),
        (100.0, 130.0, 30.0, False, 30.0),  # age == ttl: still fresh
        (100.0, 130.5, 30.0, True, 30.5),  # older than the TTL: stale
        (100.0, 90.0, 30.0, False, 0.0),  # clock went back: age clamps to 0
        (100.0, 100.1, 0.0, True, 0.1),
    ],
)
def test_staleness_at_the_ttl_boundary(
    received: float, now: float, ttl: float, stale: bool, age: float
) -> None:
    doc = metrics()
    out = mark_staleness(doc, received_at=received, now=now, ttl_seconds=ttl)
    assert out["stale"] is stale
    assert out["age_seconds"] == pytest.approx(age)
    assert "stale" not in doc, "the stored document is not modified"


def test_staleness_ignores_the_client_timestamp() -> None:
    doc = metrics()
    doc["timestamp"] = "1999-01-01T00:00:00Z"
    assert mark_staleness(doc, received_at=50.0, now=51.0, ttl_seconds=5)["stale"] is False


@given(
    st.floats(0, 1e9, allow_nan=False),
    st.floats(-1e3, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
)
def test_stale_exactly_when_older_than_ttl(received: float, delta: float, ttl: float) -> None:
    now = received + delta
    out = mark_staleness({}, received_at=received, now=now, ttl_seconds=ttl)
    assert out["age_seconds"] >= 0
    assert out["stale"] is (now - received > ttl)


def test_node_gpu_free_memory_reads_each_gpu() -> None:
    doc = validate_metrics_document(
        {
            "nodes": [
                {"id": "a", "gpus": [gpu(0, 100, 900, 10, 5), gpu(1, 500, 500, 50, 75.5)]},
                {"id": "b", "gpus": [{"gpu_id": 3, "freeMem": 40}, {"gpu_id": 4, "usedMem": 9}]},
                {"id": "c"},
            ]
        },
        cluster_id="c1",
    )
    assert node_gpu_free_memory(doc) == {
        ("a", 0): (900.0, 5.0),
        ("a", 1): (500.0, 75.5),
        ("b", 3): (40.0, 0.0),  # no cudaUtilization reported: 0
        # ("b", 4) has no freeMem: no live memory figure, left out
    }


def test_node_gpu_free_memory_of_empty_document() -> None:
    assert node_gpu_free_memory({}) == {}
    assert node_gpu_free_memory({"nodes": ["junk", {"id": 1}]}) == {}
