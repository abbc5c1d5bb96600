"""The filter DSL (CONTRACTS §5): golden tables, every error path, wrappers, and invariants."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.registry.filters import (
    MAX_DEPTH,
    MAX_NODES,
    OPERATORS,
    ClusterFilter,
    compile_filter,
    filter_documents,
    parse_cluster_filter,
)


def cond(variable: str, operator: str, value: Any) -> dict[str, Any]:
    return {"variable": variable, "operator": operator, "value": value}


def group(op: str, *conditions: Any) -> dict[str, Any]:
    return {"logicalOperator": op, "conditions": list(conditions)}


# A CONTRACTS §4 cluster document: node n1 with A100 x2 (40960 MB each), node n2 with V100 x1.
# Aggregates: gpus 2 + 1 = 3; GPU memory 2 * 40960 + 16384 = 98304; vcpus 32 + 16 = 48;
# memory 262144 + 131072 = 393216.
CLUSTER: dict[str, Any] = {
    "id": "c1",
    "regionId": "eu-1",
    "status": "live",
    "nodes": {
        "count": 2,
        "nodeData": [
            {
                "id": "n1",
                "gpus": {
                    "count": 2,
                    "memory": 81920,
                    "modelNames": ["A100"],
                    "features": ["nvlink"],
                    "gpus": [
                        {"modelName": "A100", "memory": 40960},
                        {"modelName": "A100", "memory": 40960},
                    ],
                    "topology": {"nvlinkDomains": [[0, 1]]},
                },
                "vcpus": {"count": 32},
                "memory": 262144,
                "labels": {"rack": "r1"},
            },
            {
                "id": "n2",
                "gpus": {
                    "count": 1,
                    "memory": 16384,
                    "modelNames": ["V100"],
                    "features": [],
                    "gpus": [{"modelName": "V100", "memory": 16384}],
                },
                "vcpus": {"count": 16},
                "memory": 131072,
                "labels": {"rack": "r2"},
            },
        ],
    },
    "gpus": {"count": 3, "memory": 98304},
    "vcpus": {"count": 48},
    "memory": 393216,
    "storage": {"disks": 2, "size": 4000000},
    "network": {"interfaces": 2, "txBandwidth": 100000, "rxBandwidth": 100000},
    "config": {"scheduler": {"type": "local"}},
    "tags": ["gpu", "eu"],
    "clusterMetadata": {"name": "lab", "owner": "ops", "note": None},
    "reputation": 0.9,
}

METRICS: dict[str, Any] = {
    "clusterId": "c1",
    "cluster": {"gpu": {"totalFreeMem": 50000, "count": 3}, "vcpu": {"load1m": 0.4}},
    "nodes": [
        {"id": "n1", "gpu": {"avgCudaUtilization": 70, "count": 2}},
        {"id": "n2", "gpu": {"avgCudaUtilization": 10, "count": 1}},
    ],
}

GOLDEN: list[tuple[dict[str, Any], bool]] = [
    # == and != on scalars
    (cond("id", "==", "c1"), True),
    (cond("id", "==", "c2"), False),
    (cond("id", "!=", "c2"), True),
    (cond("id", "!=", "c1"), False),
    (cond("gpus.count", "==", 3), True),
    (cond("gpus.count", "==", 3.0), True),  # ints and floats are both numbers
    (cond("reputation", "==", 0.9), True),
    # null: matches missing or null; != null matches present non-null
    (cond("clusterMetadata.note", "==", None), True),
    (cond("clusterMetadata.missing", "==", None), True),
    (cond("clusterMetadata.name", "==", None), False),
    (cond("clusterMetadata.name", "!=", None), True),
    (cond("clusterMetadata.note", "!=", None), False),
    # missing keys are a non-match for every other operator, != included
    (cond("nope", "==", "x"), False),
    (cond("nope", "!=", "x"), False),
    (cond("nope.deeper", ">", 1), False),
    (cond("clusterMetadata.note", ">", 1), False),  # null is treated like missing
    (cond("id.inner", "==", "c1"), False),  # a path running into a scalar is missing
    # ordering: 3 > 2, 3 >= 3, 3 < 4, 3 <= 2 is false; strings by code point
    (cond("gpus.count", ">", 2), True),
    (cond("gpus.count", ">", 3), False),
    (cond("gpus.count", ">=", 3), True),
    (cond("gpus.count", "<", 4), True),
    (cond("gpus.count", "<=", 2), False),
    (cond("regionId", ">", "eu-0"), True),
    (cond("regionId", "<", "eu-0"), False),
    # IN
    (cond("regionId", "IN", ["us-1", "eu-1"]), True),
    (cond("regionId", "IN", ["us-1"]), False),
    (cond("gpus.count", "IN", [1, 2, 3]), True),
    (cond("gpus.count", "IN", []), False),
    (cond("nope", "IN", ["a", None]), True),  # null in the list matches missing
    (cond("nope", "IN", ["a"]), False),
    # LIKE is an anchored, case-sensitive glob
    (cond("nodes.nodeData.gpus.modelNames", "LIKE", "A1*"), True),
    (cond("nodes.nodeData.gpus.modelNames", "LIKE", "1*"), False),  # anchored at the start
    (cond("nodes.nodeData.gpus.modelNames", "LIKE", "A10"), False),  # anchored at the end
    (cond("nodes.nodeData.gpus.modelNames", "LIKE", "?100"), True),
    (cond("nodes.nodeData.gpus.modelNames", "LIKE", "a100"), False),  # case-sensitive
    (cond("regionId", "LIKE", "eu.1"), False),  # "." is literal, not a regex wildcard
    (cond("regionId", "LIKE", "eu?1"), True),
    # crossing lists: ANY element matches (lists within lists too)
    (cond("nodes.nodeData.id", "==", "n2"), True),
    (cond("nodes.nodeData.id", "==", "n3"), False),
    (cond("nodes.nodeData.gpus.gpus.memory", ">", 40000), True),  # the A100s
    (cond("nodes.nodeData.gpus.gpus.memory", ">", 50000), False),
    (cond("nodes.nodeData.gpus.modelNames", "==", "V100"), True),
    (cond("nodes.nodeData.gpus.modelNames", "!=", "V100"), True),  # "A100" != "V100"
    (cond("nodes.nodeData.gpus.topology.nvlinkDomains", "==", 1), True),  # [[0, 1]]
    (cond("nodes.nodeData.gpus.features", "==", "nvlink"), True),
    (cond("tags", "==", "eu"), True),
    (cond("tags", "IN", ["x", "gpu"]), True),
    # list index segments
    (cond("nodes.nodeData.0.id", "==", "n1"), True),
    (cond("nodes.nodeData.0.id", "==", "n2"), False),
    (cond("nodes.nodeData.1.gpus.modelNames.0", "==", "V100"), True),
    (cond("nodes.nodeData.2.id", "==", None), True),  # past the end is missing
    (cond("nodes.nodeData.2.id", "!=", "n1"), False),
    # AND / OR, nested
    (group("AND", cond("id", "==", "c1"), cond("gpus.count", ">=", 3)), True),
    (group("AND", cond("id", "==", "c1"), cond("gpus.count", ">", 3)), False),
    (group("OR", cond("id", "==", "c2"), cond("gpus.count", ">", 2)), True),
    (group("OR", cond("id", "==", "c2"), cond("gpus.count", ">", 3)), False),
    (
        group(
            "AND",
            cond("status", "==", "live"),
            group(
                "OR",
                cond("nodes.nodeData.gpus.modelNames", "LIKE", "H1*"),
                group("AND", cond("regionId", "==", "eu-1"), cond("vcpus.count", ">=", 48)),
            ),
        ),
        True,
    ),
    (
        group(
            "AND",
            cond("status", "==", "live"),
            group("OR", cond("tags", "==", "cpu"), cond("memory", "<", 1000)),
        ),
        False,
    ),
]


@pytest.mark.parametrize(("spec", "expected"), GOLDEN)
def test_golden(spec: dict[str, Any], expected: bool) -> None:
    assert compile_filter(spec)(CLUSTER, label='cluster "c1"') is expected


def test_h100_glob_anchoring_on_a_plain_string() -> None:
    doc = {"model": "H100"}
    assert compile_filter(cond("model", "LIKE", "H1*"))(doc) is True
    assert compile_filter(cond("model", "LIKE", "1*"))(doc) is False
    assert compile_filter(cond("model", "LIKE", "*1*"))(doc) is True
    assert compile_filter(cond("model", "LIKE", "H10?"))(doc) is True
    assert compile_filter(cond("model", "LIKE", "H10"))(doc) is False


def test_integer_segment_is_a_key_on_objects() -> None:
    # "0" indexes a list, but is an ordinary key on an object
    assert compile_filter(cond("slots.0", "==", "x"))({"slots": {"0": "x"}}) is True
    assert compile_filter(cond("slots.0", "==", "x"))({"slots": ["x"]}) is True
    assert compile_filter(cond("slots.0", "==", "x"))({"slots": ["y", "x"]}) is False


def test_empty_list_contributes_no_values() -> None:
    doc = {"tags": []}
    assert compile_filter(cond("tags", "==", None))(doc) is False
    assert compile_filter(cond("tags", "!=", "x"))(doc) is False


SHAPE_ERRORS: list[tuple[Any, str, str]] = [
    # (spec, details["path"], a fragment the message must contain)
    ([], "filter", "must be an object"),
    ("id == c1", "filter", "must be an object"),
    (cond("id", "=~", "c1"), "filter.operator", "==, !=, IN, >, >=, <, <=, LIKE"),
    (cond("id", "like", "c*"), "filter.operator", "unknown operator"),
    ({"operator": "==", "value": 1}, "filter.variable", 'missing "variable"'),
    ({"variable": "id", "value": 1}, "filter.operator", 'missing "operator"'),
    ({"variable": "id", "operator": "=="}, "filter.value", 'missing "value"'),
    ({**cond("id", "==", "c1"), "negate": True}, "filter.negate", 'unknown key "negate"'),
    (cond("", "==", 1), "filter.variable", "non-empty dot path"),
    (cond(3, "==", 1), "filter.variable", "non-empty dot path"),
    (cond("a..b", "==", 1), "filter.variable", "empty segment"),
    (cond("a.", "==", 1), "filter.variable", "empty segment"),
    (
        {"logicalOperator": "XOR", "conditions": [cond("id", "==", 1)]},
        "filter.logicalOperator",
        '"AND" or "OR"',
    ),
    ({"logicalOperator": "AND", "conditions": []}, "filter.conditions", "non-empty list"),
    ({"logicalOperator": "AND", "conditions": {"a": 1}}, "filter.conditions", "non-empty list"),
    ({"conditions": [cond("id", "==", 1)]}, "filter.logicalOperator", 'missing "logicalOperator"'),
    ({"logicalOperator": "OR"}, "filter.conditions", 'missing "conditions"'),
    ({**group("OR", cond("id", "==", 1)), "variable": "x"}, "filter.variable", "unknown key"),
    (group("OR", cond("id", "==", 1), 7), "filter.conditions[1]", "must be an object"),
    (
        group("AND", cond("id", "==", 1), group("OR", cond("id", "?", 1))),
        "filter.conditions[1].conditions[0].operator",
        "unknown operator",
    ),
    (cond("id", "IN", "c1"), "filter.value", "IN takes a list"),
    (cond("id", "IN", ["a", 1]), "filter.value", "one type"),
    (cond("id", "IN", [True, 1]), "filter.value", "one type"),  # bool is not a number
    (cond("id", "IN", [["a"]]), "filter.value", "one type"),
    (cond("id", "LIKE", 5), "filter.value", "LIKE takes a glob string"),
    (cond("id", "LIKE", None), "filter.value", "LIKE takes a glob string"),
    (cond("gpus.count", ">", True), "filter.value", "number or a string"),
    (cond("gpus.count", "<=", None), "filter.value", "number or a string"),
    (cond("gpus.count", ">=", [1]), "filter.value", "number or a string"),
    (cond("tags", "==", ["gpu"]), "filter.value", "use IN"),
    (cond("labels", "!=", {"rack": "r1"}), "filter.value", "use IN"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), SHAPE_ERRORS)
def test_shape_errors_name_the_path(spec: Any, path: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        compile_filter(spec)
    assert info.value.details["path"] == path
    assert fragment in info.value.message
    assert info.value.message.startswith(path)


def test_caller_prefix_is_used_in_paths() -> None:
    with pytest.raises(InvalidRequest) as info:
        compile_filter(group("AND", cond("x", "!", 1)), path="inputs.requests[0].node_filter")
    assert info.value.details["path"] == "inputs.requests[0].node_filter.conditions[0].operator"


def nested(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = cond("id", "==", "c1")
    for _ in range(depth):
        spec = group("AND", spec)
    return spec


def test_depth_limit() -> None:
    assert compile_filter(nested(MAX_DEPTH))(CLUSTER) is True
    with pytest.raises(InvalidRequest) as info:
        compile_filter(nested(MAX_DEPTH + 1))
    # the 33rd group is reached through 32 ".conditions[0]" steps
    assert info.value.details["path"] == "filter" + ".conditions[0]" * MAX_DEPTH
    assert f"more than {MAX_DEPTH} deep" in info.value.message


def test_size_limit() -> None:
    # one group plus MAX_NODES - 1 conditions is exactly MAX_NODES nodes: allowed
    fits = group("OR", *[cond("gpus.count", "==", i) for i in range(MAX_NODES - 1)])
    assert compile_filter(fits)(CLUSTER) is True  # 3 is among 0..998
    too_big = group("OR", *[cond("gpus.count", "==", i) for i in range(MAX_NODES)])
    with pytest.raises(InvalidRequest) as info:
        compile_filter(too_big)
    assert info.value.details["path"] == f"filter.conditions[{MAX_NODES - 1}]"
    assert f"more than {MAX_NODES}" in info.value.message


def test_type_mismatch_message_matches_the_contract() -> None:
    spec = group("AND", cond("id", "==", "c1"), cond("gpus.count", "==", "8"))
    with pytest.raises(InvalidRequest) as info:
        compile_filter(spec)(CLUSTER, label='cluster "c1"')
    assert info.value.message == (
        'filter.conditions[1]: variable "gpus.count" is a number in cluster "c1" '
        'but the value "8" is a string'
    )
    assert info.value.details["path"] == "filter.conditions[1]"
    assert info.value.details["variable"] == "gpus.count"


EVAL_ERRORS: list[tuple[dict[str, Any], str]] = [
    # (condition, fragment of the message); each compares values of different types
    (cond("gpus.count", "!=", "3"), 'is a number in the document but the value "3" is a string'),
    (cond("gpus.count", ">", "2"), "is a number"),
    (cond("gpus.count", "==", True), "but the value true is a boolean"),
    (cond("regionId", "<", 5), "is a string in the document but the value 5 is a number"),
    (cond("nodes.nodeData.labels", "==", "r1"), "is an object"),
    (cond("gpus.count", "LIKE", "3*"), "is a number"),
    (cond("gpus.count", "IN", ["3", "4"]), 'the values ["3","4"] are strings'),
    (cond("nodes.nodeData.gpus.gpus.memory", "==", "40960"), "is a number"),  # inside a list
]


@pytest.mark.parametrize(("spec", "fragment"), EVAL_ERRORS)
def test_type_mismatch_at_evaluation(spec: dict[str, Any], fragment: str) -> None:
    predicate = compile_filter(spec)  # the shape is fine; the data decides
    with pytest.raises(InvalidRequest) as info:
        predicate(CLUSTER)
    assert info.value.details["path"] == "filter"
    assert fragment in info.value.message
    # the same condition is fine on a document where the field is missing
    assert predicate({"id": "other"}) is False


def test_mismatch_in_any_element_is_reported_even_after_a_match() -> None:
    # "a" matches first, 7 has the wrong type: the error does not depend on element order
    predicate = compile_filter(cond("xs", "==", "a"))
    for doc in ({"xs": ["a", 7]}, {"xs": [7, "a"]}):
        with pytest.raises(InvalidRequest):
            predicate(doc)


def test_groups_short_circuit_before_a_mismatch() -> None:
    spec = group("OR", cond("id", "==", "c1"), cond("gpus.count", "==", "3"))
    assert compile_filter(spec)(CLUSTER) is True


def test_filter_documents_labels_each_document() -> None:
    docs = [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": "x"}]
    predicate = compile_filter(cond("n", ">=", 2))
    assert filter_documents(predicate, docs[:2]) == [docs[1]]
    with pytest.raises(InvalidRequest) as info:
        filter_documents(predicate, docs)
    assert 'in id "c"' in info.value.message


# --- wrappers ----------------------------------------------------------------------------------


def test_no_filter() -> None:
    assert parse_cluster_filter(None) is None
    assert parse_cluster_filter({}) is None
    assert parse_cluster_filter({"body": {"values": {}}}) is None
    assert parse_cluster_filter({"matchType": "cluster", "filter": {}}) is None
    assert parse_cluster_filter({"matchType": "cluster"}) is None
    assert (
        parse_cluster_filter({"filter": {"clusterQuery": {}, "clusterMetricsQuery": None}}) is None
    )


def test_bare_wrapper() -> None:
    parsed = parse_cluster_filter(cond("regionId", "==", "eu-1"))
    assert isinstance(parsed, ClusterFilter)
    assert parsed.metrics is None
    assert parsed.matches(CLUSTER, None) is True
    assert parsed.matches({**CLUSTER, "regionId": "us-1"}, None) is False


def test_envelope_with_both_parts() -> None:
    spec = {
        "matchType": "cluster",
        "filter": {
            "clusterQuery": cond("nodes.nodeData.gpus.modelNames", "IN", ["A100", "H100"]),
            "clusterMetricsQuery": cond("cluster.gpu.totalFreeMem", ">=", 40000),
        },
    }
    parsed = parse_cluster_filter(spec)
    assert parsed is not None
    assert parsed.matches(CLUSTER, METRICS) is True
    # 30000 free is not >= 40000
    low = {**METRICS, "cluster": {"gpu": {"totalFreeMem": 30000}}}
    assert parsed.matches(CLUSTER, low) is False
    # no metrics: a metrics condition cannot match
    assert parsed.matches(CLUSTER, None) is False
    # the cluster part fails first
    v100_only = {**CLUSTER, "nodes": {"nodeData": [CLUSTER["nodes"]["nodeData"][1]]}}
    assert parsed.matches(v100_only, METRICS) is False


def test_metrics_only_envelope_and_metrics_paths_are_relative() -> None:
    spec = {"filter": {"clusterMetricsQuery": cond("nodes.gpu.avgCudaUtilization", "<", 20)}}
    parsed = parse_cluster_filter(spec)
    assert parsed is not None and parsed.cluster is None
    assert parsed.matches(CLUSTER, METRICS) is True  # n2 is at 10 %
    assert parsed.matches(CLUSTER, {"nodes": [{"gpu": {"avgCudaUtilization": 90}}]}) is False


def test_metrics_mismatch_names_the_metrics_document() -> None:
    parsed = parse_cluster_filter({"filter": {"clusterMetricsQuery": cond("clusterId", ">", 1)}})
    assert parsed is not None
    with pytest.raises(InvalidRequest) as info:
        parsed.matches(CLUSTER, METRICS, label='cluster "c1"')
    assert info.value.details["path"] == "filter.filter.clusterMetricsQuery"
    assert 'in the metrics of cluster "c1"' in info.value.message


def test_parser_envelope() -> None:
    inner = {"matchType": "cluster", "filter": {"clusterQuery": cond("id", "==", "c1")}}
    for spec in ({"body": {"values": inner}}, {"body": {"values": cond("id", "==", "c1")}}):
        parsed = parse_cluster_filter(spec)
        assert parsed is not None
        assert parsed.matches(CLUSTER, None) is True
        assert parsed.matches({"id": "c9"}, None) is False


WRAPPER_ERRORS: list[tuple[Any, str, str]] = [
    ([cond("id", "==", 1)], "filter", "must be an object"),
    ({"matchType": "block", "filter": {}}, "filter.matchType", 'only "cluster"'),
    ({"matchType": "cluster", "filter": []}, "filter.filter", "clusterQuery"),
    ({"matchType": "cluster", "filter": 5}, "filter.filter", "clusterQuery"),
    ({"matchType": "cluster", "filter": {"blockQuery": {}}}, "filter.filter.blockQuery", "unknown"),
    ({"matchType": "cluster", "rankingPolicyRule": {}}, "filter.rankingPolicyRule", "unknown key"),
    (
        {"filter": {"clusterQuery": cond("id", "~", 1)}},
        "filter.filter.clusterQuery.operator",
        "unknown operator",
    ),
    ({"body": {"values": {}}, "x": 1}, "filter.x", "unknown key"),
    ({"body": []}, "filter.body", "must be an object"),
    ({"body": {}}, "filter.body.values", 'missing "values"'),
    ({"body": {"values": {}, "extra": 1}}, "filter.body.extra", "unknown key"),
    ({"body": {"values": 3}}, "filter.body.values", "must be an object"),
    (
        {"body": {"values": {"filter": {"clusterQuery": cond("id", "IN", 1)}}}},
        "filter.body.values.filter.clusterQuery.value",
        "IN takes a list",
    ),
    # a parser envelope inside a parser envelope is not one of the wrappers
    ({"body": {"values": {"body": {"values": {}}}}}, "filter.body.values.body", "unknown key"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), WRAPPER_ERRORS)
def test_wrapper_errors(spec: Any, path: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_cluster_filter(spec)
    assert info.value.details["path"] == path
    assert fragment in info.value.message


# --- invariants against a reference evaluator ---------------------------------------------------


class Mismatch(Exception):
    pass


def ref_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return "str"


def reference(doc: dict[str, Any], spec: dict[str, Any]) -> bool:
    """A plain evaluator over flat documents, written independently of the module."""
    if "logicalOperator" in spec:
        results = (reference(doc, c) for c in spec["conditions"])
        return all(results) if spec["logicalOperator"] == "AND" else any(results)
    var, op, value = spec["variable"], spec["operator"], spec["value"]
    found = doc.get(var)
    if found is None:
        return (op == "==" and value is None) or (op == "IN" and None in value)
    if value is None:
        return op == "!="
    if op == "IN":
        members = [v for v in value if v is not None]
        if members and ref_kind(members[0]) != ref_kind(found):
            raise Mismatch
        return any(found == v for v in members)
    if ref_kind(found) != ref_kind(value):
        raise Mismatch
    if op == "LIKE":
        return fnmatch.fnmatchcase(found, value)
    checks = {
        "==": found == value,
        "!=": found != value,
        ">": found > value,
        ">=": found >= value,
        "<": found < value,
        "<=": found <= value,
    }
    return checks[op]


KEYS = ["a", "b", "c"]
texts = st.text(alphabet="ab*?.x", max_size=4)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.text(alphabet="abx.", max_size=3),
)
docs = st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPERATORS))
    variable = draw(st.sampled_from([*KEYS, "missing"]))
    if op == "LIKE":
        value: Any = draw(texts)
    elif op == "IN":
        base = draw(
            st.sampled_from([st.booleans(), st.integers(-5, 5), st.text("abx", max_size=2)])
        )
        value = draw(st.lists(st.one_of(st.none(), base), max_size=3))
    elif op in ("==", "!="):
        value = draw(scalars)
    else:
        value = draw(st.one_of(st.integers(-5, 5), st.floats(-5, 5), st.text("abx", max_size=3)))
    return cond(variable, op, value)


filters = st.one_of(
    conditions(),
    st.builds(
        lambda op, cs: group(op, *cs),
        st.sampled_from(["AND", "OR"]),
        st.lists(conditions(), min_size=1, max_size=4),
    ),
)


def outcome(fn: Any) -> bool | str:
    try:
        return bool(fn())
    except (Mismatch, InvalidRequest):
        return "mismatch"


@settings(max_examples=400)
@given(doc=docs, spec=filters)
def test_agrees_with_reference(doc: dict[str, Any], spec: dict[str, Any]) -> None:
    predicate = compile_filter(spec)
    assert outcome(lambda: predicate(doc)) == outcome(lambda: reference(doc, spec))


@settings(max_examples=300)
@given(doc=docs, spec=conditions())
def test_not_equal_is_the_negation_of_equal_when_present(
    doc: dict[str, Any], spec: dict[str, Any]
) -> None:
    value = spec["value"]
    if isinstance(value, list):
        value = value[0] if value else None
    eq = compile_filter(cond(spec["variable"], "==", value))
    ne = compile_filter(cond(spec["variable"], "!=", value))
    found = doc.get(spec["variable"])
    if found is None and value is not None:  # missing or null: neither matches
        assert eq(doc) is False and ne(doc) is False
    elif value is None or ref_kind(found) == ref_kind(value):
        # present with the value's type, or a null value: != is exactly "not =="
        assert ne(doc) is not eq(doc)
    else:  # present with another type: both are type errors
        assert outcome(lambda: eq(doc)) == outcome(lambda: ne(doc)) == "mismatch"


@settings(max_examples=300)
@given(x=scalars, y=scalars, spec=conditions())
def test_a_list_matches_when_any_element_matches(x: Any, y: Any, spec: dict[str, Any]) -> None:
    if x is None or y is None:
        return  # null elements follow the missing-value rules, covered by the golden table
    predicate = compile_filter({**spec, "variable": "a"})
    both = outcome(lambda: predicate({"a": [x, [y]]}))
    each = [outcome(lambda v=v: predicate({"a": v})) for v in (x, y)]
    if "mismatch" in each:
        assert both == "mismatch"
    else:
        assert both == any(each)
