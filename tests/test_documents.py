"""Cluster documents: validation, computed and checked aggregates, readers (CONTRACTS §4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.documents.readers import expand_node_gpus, nvlink_domains, scheduler_type

# CONTRACTS §4's example, with nodes.count 1: the contract's text says 2 but lists one node
# (and its aggregates add up to that one node), which the count rule refuses (see below).
CONTRACT_EXAMPLE: dict[str, Any] = {
    "id": "c1",
    "regionId": "eu-1",
    "status": "live",
    "nodes": {
        "count": 1,
        "nodeData": [
            {
                "id": "n1",
                "gpus": {
                    "count": 8,
                    "memory": 655360,
                    "modelNames": ["H100"],
                    "features": ["nvlink"],
                    "gpus": [{"modelName": "H100", "memory": 81920}],
                    "topology": {"nvlinkDomains": [[0, 1, 2, 3], [4, 5, 6, 7]]},
                },
                "vcpus": {"count": 96},
                "memory": 1048576,
                "labels": {"rack": "r1"},
            }
        ],
    },
    "gpus": {"count": 8, "memory": 655360},
    "vcpus": {"count": 96},
    "memory": 1048576,
    "storage": {"disks": 2, "size": 4000000},
    "network": {"interfaces": 2, "txBandwidth": 100000, "rxBandwidth": 100000},
    "config": {"scheduler": {"type": "local"}},
    "tags": ["gpu"],
    "clusterMetadata": {"name": "…", "owner": "…"},
    "reputation": 1.0,
}


def example() -> dict[str, Any]:
    return copy.deepcopy(CONTRACT_EXAMPLE)


def bare_two_nodes() -> dict[str, Any]:
    """Two nodes with no aggregates stated anywhere."""
    return {
        "id": "c2",
        "nodes": {
            "nodeData": [
                {
                    "id": "n1",
                    "gpus": {"count": 8, "gpus": [{"modelName": "H100", "memory": 81920}]},
                    "vcpus": {"count": 96},
                    "memory": 1048576,
                },
                {
                    "id": "n2",
                    "gpus": {
                        "count": 4,
                        "gpus": [
                            {"modelName": "V100", "memory": 16384},
                            {"modelName": "A100", "memory": 40960},
                            {"modelName": "A100", "memory": 40960},
                            {"modelName": "A100", "memory": 81920},
                        ],
                    },
                    "vcpus": {"count": 32},
                    "memory": 262144,
                },
            ]
        },
    }


def refused(doc: Any, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        validate_cluster_document(doc, **kwargs)
    return info.value


def test_contract_example_validates_and_round_trips() -> None:
    doc = example()
    out = validate_cluster_document(doc)
    assert out == CONTRACT_EXAMPLE
    out["nodes"]["nodeData"][0]["labels"]["rack"] = "changed"
    assert doc == CONTRACT_EXAMPLE, "the result must be a new document, not the input"


def test_contract_example_as_printed_is_refused_on_nodes_count() -> None:
    doc = example()
    doc["nodes"]["count"] = 2
    err = refused(doc)
    assert err.details["path"] == "body.nodes.count"
    assert "is 2 but nodeData lists 1 node;" in err.message


def test_aggregates_are_computed_when_absent() -> None:
    out = validate_cluster_document(bare_two_nodes())
    n1, n2 = out["nodes"]["nodeData"]
    assert out["nodes"]["count"] == 2
    assert n1["gpus"]["memory"] == 655360  # 8 × 81920 (one entry standing for all 8)
    assert n1["gpus"]["modelNames"] == ["H100"]
    assert n2["gpus"]["memory"] == 180224  # 16384 + 40960 + 40960 + 81920
    assert n2["gpus"]["modelNames"] == ["A100", "V100"]  # sorted, distinct
    assert n1["gpus"]["features"] == []
    assert out["gpus"] == {"count": 12, "memory": 835584}  # 8 + 4; 655360 + 180224
    assert out["vcpus"] == {"count": 128}  # 96 + 32
    assert out["memory"] == 1310720  # 1048576 + 262144


def test_validation_is_idempotent_on_computed_output() -> None:
    once = validate_cluster_document(bare_two_nodes())
    assert validate_cluster_document(once) == once


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value


N0 = "nodes.nodeData.0"


@pytest.mark.parametrize(
    ("field", "stated", "computed"),
    [
        ("gpus.count", 16, "8"),  # one node with 8 GPUs
        ("gpus.memory", 655361, "655360"),  # 8 × 81920
        ("vcpus.count", 95, "96"),
        ("memory", 1, "1048576"),
        (f"{N0}.gpus.memory", 81920, "655360"),  # per-GPU memory, not the node total
        (f"{N0}.gpus.modelNames", ["A100"], "['H100']"),
    ],
)
def test_stated_aggregate_mismatch_is_refused_with_computed_value(
    field: str, stated: Any, computed: str
) -> None:
    doc = example()
    _set(doc, field, stated)
    err = refused(doc)
    path = "body." + field.replace(".nodeData.0", ".nodeData[0]")
    assert err.details["path"] == path
    assert computed in err.message
    assert "leave it out to have it computed" in err.message


def test_cluster_gpus_partly_stated_is_checked_and_completed() -> None:
    doc = example()
    del doc["gpus"]["memory"]
    out = validate_cluster_document(doc)
    assert out["gpus"] == {"count": 8, "memory": 655360}


def test_cluster_without_node_data_keeps_its_stated_aggregates() -> None:
    doc = {
        "id": "slurm-a",
        "nodes": {"count": 16},
        "gpus": {"count": 64, "memory": 1},
        "config": {"scheduler": {"type": "slurm", "partition": "gpu"}},
    }
    out = validate_cluster_document(doc)
    assert out["nodes"] == {"count": 16, "nodeData": []}
    assert out["gpus"] == {"count": 64, "memory": 1}
    assert "vcpus" not in out and "memory" not in out
    assert scheduler_type(out) == "slurm"


def test_missing_nodes_becomes_empty() -> None:
    out = validate_cluster_document({"id": "empty"})
    assert out["nodes"] == {"count": 0, "nodeData": []}


def test_one_entry_form_expands_to_count_entries() -> None:
    node = validate_cluster_document(example())["nodes"]["nodeData"][0]
    gpus = expand_node_gpus(node)
    assert gpus == [{"modelName": "H100", "memory": 81920}] * 8
    assert nvlink_domains(node) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_listed_gpus_expand_in_index_order_and_no_topology_means_no_domains() -> None:
    node = validate_cluster_document(bare_two_nodes())["nodes"]["nodeData"][1]
    assert [g["modelName"] for g in expand_node_gpus(node)] == ["V100", "A100", "A100", "A100"]
    assert nvlink_domains(node) == []


def test_node_without_gpus_has_none() -> None:
    out = validate_cluster_document({"id": "cpu", "nodes": {"nodeData": [{"id": "c0"}]}})
    node = out["nodes"]["nodeData"][0]
    assert node["gpus"]["count"] == 0 and expand_node_gpus(node) == []
    assert node["vcpus"] == {"count": 0} and node["memory"] == 0
    assert out["gpus"] == {"count": 0, "memory": 0}


def test_gpu_count_may_be_left_out_when_every_gpu_is_listed() -> None:
    doc = {
        "id": "c",
        "nodes": {
            "nodeData": [{"id": "n", "gpus": {"gpus": [{"modelName": "L4", "memory": 24576}] * 3}}]
        },
    }
    out = validate_cluster_document(doc)
    assert out["nodes"]["nodeData"][0]["gpus"]["count"] == 3
    assert out["gpus"] == {"count": 3, "memory": 73728}  # 3 × 24576


def test_unknown_keys_are_kept() -> None:
    doc = example()
    doc["x-top"] = {"a": 1}
    doc["nodes"]["nodeData"][0]["x-node"] = [1, 2]
    doc["nodes"]["nodeData"][0]["gpus"]["gpus"][0]["uuid"] = "GPU-1"
    out = validate_cluster_document(doc)
    assert out["x-top"] == {"a": 1}
    assert out["nodes"]["nodeData"][0]["x-node"] == [1, 2]
    assert out["nodes"]["nodeData"][0]["gpus"]["gpus"][0]["uuid"] == "GPU-1"


@pytest.mark.parametrize("bad", ["", "-a", ".a", "a b", "a/b", "x" * 129, "é", 5, None])
def test_bad_cluster_id_is_refused(bad: Any) -> None:
    doc = example()
    doc["id"] = bad
    assert refused(doc).details["path"] == "body.id"


@pytest.mark.parametrize("good", ["a", "A.b_c-1", "0", "x" * 128])
def test_good_cluster_ids_pass(good: str) -> None:
    doc = example()
    doc["id"] = good
    assert validate_cluster_document(doc)["id"] == good


def test_bad_node_id_is_refused() -> None:
    doc = example()
    doc["nodes"]["nodeData"][0]["id"] = "n 1"
    assert refused(doc).details["path"] == "body.nodes.nodeData[0].id"


def test_expected_id_is_set_when_absent_and_checked_when_present() -> None:
    doc = example()
    del doc["id"]
    assert validate_cluster_document(doc, expected_id="c9")["id"] == "c9"
    err = refused(example(), expected_id="c9")
    assert err.details["path"] == "body.id" and "'c9'" in err.message
    assert validate_cluster_document(example(), expected_id="c1")["id"] == "c1"
    assert refused({"nodes": {}}).details["path"] == "body.id"


def test_duplicate_node_ids_are_refused() -> None:
    doc = bare_two_nodes()
    doc["nodes"]["nodeData"][1]["id"] = "n1"
    err = refused(doc)
    assert err.details["path"] == "body.nodes.nodeData[1].id"
    assert "nodeData[0]" in err.message


@pytest.mark.parametrize(
    ("domains", "path"),
    [
        ([[0, 1, 2, 3], [8]], "[1][0]"),  # 8 GPUs: indices 0..7
        ([[0, 1, 2, 3], [3, 4]], "[1][0]"),  # GPU 3 already in domain 0
        ([[0, 1], [2, 2]], "[1][1]"),  # repeated inside one domain
        ([[0, 1], []], "[1]"),
        ([[0, "1"]], "[0][1]"),
        ([[0, -1]], "[0][1]"),
        ([0, 1], "[0]"),
        ("0-7", ""),
    ],
)
def test_bad_nvlink_domains_are_refused(domains: Any, path: str) -> None:
    doc = example()
    doc["nodes"]["nodeData"][0]["gpus"]["topology"]["nvlinkDomains"] = domains
    err = refused(doc)
    assert err.details["path"] == "body.nodes.nodeData[0].gpus.topology.nvlinkDomains" + path


def test_a_scheduler_type_must_be_an_adapters_name() -> None:
    doc = example()
    doc["config"]["scheduler"]["type"] = "pbs"  # a plugin's adapter may be named so
    assert scheduler_type(doc) == "pbs"
    doc["config"]["scheduler"]["type"] = "PBS Pro!"
    err = refused(doc)
    assert err.details["path"] == "body.config.scheduler.type"
    assert "an adapter's name (local, slurm, or a plugin's" in err.message
    with pytest.raises(InvalidRequest):
        scheduler_type(doc)


def test_scheduler_type_defaults_to_local() -> None:
    assert scheduler_type({"id": "c"}) == "local"
    assert scheduler_type({"config": {"scheduler": {}}}) == "local"
    assert scheduler_type(example()) == "local"


def test_nodes_count_must_match_node_data() -> None:
    doc = bare_two_nodes()
    doc["nodes"]["count"] = 3
    err = refused(doc)
    assert err.details["path"] == "body.nodes.count"
    assert "is 3 but nodeData lists 2" in err.message


G0 = "nodes.nodeData[0].gpus"


def _mutations() -> list[tuple[str, Any, str]]:
    """(what to change, how, the path the error must name)."""

    def gpu_entries(d: dict[str, Any]) -> list[Any]:
        return d["nodes"]["nodeData"][0]["gpus"]["gpus"]  # type: ignore[no-any-return]

    def node(d: dict[str, Any]) -> dict[str, Any]:
        return d["nodes"]["nodeData"][0]  # type: ignore[no-any-return]

    return [
        (
            "memory string",
            lambda d: gpu_entries(d)[0].update(memory="80GB"),
            f"{G0}.gpus[0].memory",
        ),
        ("memory negative", lambda d: gpu_entries(d)[0].update(memory=-1), f"{G0}.gpus[0].memory"),
        (
            "memory nan",
            lambda d: gpu_entries(d)[0].update(memory=float("nan")),
            f"{G0}.gpus[0].memory",
        ),
        ("no modelName", lambda d: gpu_entries(d)[0].pop("modelName"), f"{G0}.gpus[0].modelName"),
        ("entry not object", lambda d: gpu_entries(d).__setitem__(0, "H100"), f"{G0}.gpus[0]"),
        ("count bool", lambda d: node(d)["gpus"].update(count=True), f"{G0}.count"),
        ("count float", lambda d: node(d)["gpus"].update(count=8.0), f"{G0}.count"),
        ("gpus missing", lambda d: node(d)["gpus"].pop("gpus"), f"{G0}.gpus"),
        ("2 of 8 listed", lambda d: gpu_entries(d).append(gpu_entries(d)[0]), f"{G0}.gpus"),
        ("features", lambda d: node(d)["gpus"].update(features="nvlink"), f"{G0}.features"),
        ("labels", lambda d: node(d)["labels"].update(rack=1), "nodes.nodeData[0].labels.rack"),
        ("vcpus", lambda d: node(d)["vcpus"].update(count=-2), "nodes.nodeData[0].vcpus.count"),
        (
            "no vcpus count",
            lambda d: node(d)["vcpus"].pop("count"),
            "nodes.nodeData[0].vcpus.count",
        ),
        ("node memory", lambda d: node(d).update(memory="1T"), "nodes.nodeData[0].memory"),
        (
            "node not object",
            lambda d: d["nodes"]["nodeData"].__setitem__(0, []),
            "nodes.nodeData[0]",
        ),
        ("nodeData", lambda d: d["nodes"].update(nodeData={}), "nodes.nodeData"),
        ("nodes", lambda d: d.update(nodes=[]), "nodes"),
        ("reputation > 1", lambda d: d.update(reputation=2), "reputation"),
        ("tags", lambda d: d.update(tags=[1]), "tags"),
        ("status", lambda d: d.update(status=1), "status"),
        ("config", lambda d: d.update(config="local"), "config"),
        ("cluster gpus", lambda d: d.update(gpus=8), "gpus"),
    ]


@pytest.mark.parametrize(("name", "mutate", "path"), _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_types_at_nested_paths(name: str, mutate: Any, path: str) -> None:
    doc = example()
    mutate(doc)
    err = refused(doc)
    assert err.details["path"] == "body." + path
    assert err.details["errors"][0] == {
        "path": "body." + path,
        "message": err.message.split(" (and ")[0],
    }


def test_all_problems_are_listed_and_path_prefix_is_used() -> None:
    doc = example()
    doc["status"] = 1
    doc["nodes"]["nodeData"][0]["memory"] = -5
    err = refused(doc, path="cluster")
    paths = [e["path"] for e in err.details["errors"]]
    assert paths == ["cluster.status", "cluster.nodes.nodeData[0].memory"]
    assert "1 more problem" in err.message


def test_non_object_document_is_refused() -> None:
    assert refused([CONTRACT_EXAMPLE]).details["path"] == "body"


def test_expand_refuses_a_node_whose_list_does_not_fit() -> None:
    node = {"id": "n", "gpus": {"count": 3, "gpus": [{"modelName": "a", "memory": 1}] * 2}}
    with pytest.raises(InvalidRequest):
        expand_node_gpus(node)


gpu_entry = st.fixed_dictionaries(
    {"modelName": st.sampled_from(["A100", "H100", "L4"]), "memory": st.integers(0, 200_000)}
)
node_gpus = st.one_of(
    st.lists(gpu_entry, min_size=0, max_size=8).map(lambda g: {"count": len(g), "gpus": g}),
    st.tuples(gpu_entry, st.integers(1, 16)).map(lambda t: {"count": t[1], "gpus": [t[0]]}),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(node_gpus, st.integers(0, 256), st.integers(0, 10**7)), max_size=6))
def test_computed_aggregates_are_sums_over_expanded_gpus(
    nodes: list[tuple[dict[str, Any], int, int]],
) -> None:
    doc = {
        "id": "h",
        "nodes": {
            "nodeData": [
                {"id": f"n{i}", "gpus": g, "vcpus": {"count": v}, "memory": m}
                for i, (g, v, m) in enumerate(nodes)
            ]
        },
    }
    out = validate_cluster_document(doc)
    expanded = [expand_node_gpus(n) for n in out["nodes"]["nodeData"]]
    assert [len(e) for e in expanded] == [g["count"] for g, _, _ in nodes]
    for node, gpus in zip(out["nodes"]["nodeData"], expanded, strict=True):
        assert node["gpus"]["memory"] == sum(g["memory"] for g in gpus)
        assert node["gpus"]["modelNames"] == sorted({g["modelName"] for g in gpus})
    if nodes:
        assert out["gpus"]["count"] == sum(len(e) for e in expanded)
        assert out["vcpus"]["count"] == sum(v for _, v, _ in nodes)
    assert validate_cluster_document(out) == out
