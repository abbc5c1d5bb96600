"""The ``similarity:1.0-stable`` ranking policy: hand-computed orders, ties, features, errors."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.registry.similarity import FEATURES, SimilarityPolicy

TARGET_PATH = "search.rankingPolicyRule.parameters.target"


def cluster(cid: str, gpus: int = 0, memory: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "gpus": {"count": gpus}, "memory": memory, "cluster_metrics": None, **extra}


def policy() -> SimilarityPolicy:
    return SimilarityPolicy("similarity:1.0-stable", {}, {})


def ranked(params: dict[str, Any], docs: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(d["id"], d["similarity"]) for d in policy().eval(params, docs, {})]


def test_hand_computed_order() -> None:
    # target gpus 8, memory 100. Column scales: gpus max 8, memory max 200.
    #   a (8, 100) -> (1, 0.5)   b (4, 200) -> (0.5, 1)   c (8, 50) -> (1, 0.25)   t -> (1, 0.5)
    #   cos a = 1
    #   cos b = (0.5 + 0.5) / (sqrt(1.25) * sqrt(1.25)) = 1 / 1.25 = 0.8
    #   cos c = (1 + 0.125) / (sqrt(1.0625) * sqrt(1.25)) = 1.125 / 1.15244 = 0.97619
    docs = [cluster("b", 4, 200), cluster("c", 8, 50), cluster("a", 8, 100)]
    result = ranked({"target": {"gpus": 8, "memory": 100}}, docs)
    assert [cid for cid, _ in result] == ["a", "c", "b"]
    assert [score for _, score in result] == pytest.approx(
        [1.0, 1.125 / math.sqrt(1.0625 * 1.25), 0.8]
    )


def test_weights_change_the_order() -> None:
    # weight memory 4: vectors scaled by sqrt(w) = (1, 2) per column.
    #   a (1, 0.5) -> (1, 1)   b (0.5, 1) -> (0.5, 2)   t (0.5, 1) -> (0.5, 2)   [t = (4, 200)]
    #   cos b = 1; cos a = (0.5 + 2) / (sqrt(2) * sqrt(4.25)) = 2.5 / 2.91548 = 0.85749
    docs = [cluster("a", 8, 100), cluster("b", 4, 200)]
    result = ranked({"target": {"gpus": 4, "memory": 200}, "weights": {"memory": 4}}, docs)
    assert [cid for cid, _ in result] == ["b", "a"]
    assert result[1][1] == pytest.approx(2.5 / math.sqrt(2 * 4.25))
    # the same target without weights: a = (1, .5), t = (.5, 1): cos a = 1 / 1.25 = 0.8
    assert ranked({"target": {"gpus": 4, "memory": 200}}, docs)[1] == ("a", pytest.approx(0.8))


def test_ties_break_by_id() -> None:
    # weight 0 on memory leaves only gpus: every positive 1-D vector has cosine 1 with t
    docs = [cluster("z", 8, 100), cluster("m", 4, 200), cluster("a", 2, 50)]
    result = ranked({"target": {"gpus": 8, "memory": 100}, "weights": {"memory": 0}}, docs)
    assert result == [("a", 1.0), ("m", 1.0), ("z", 1.0)]


def test_features_outside_the_target_are_ignored() -> None:
    docs = [cluster("b", 8, 1), cluster("a", 8, 999999)]
    assert ranked({"target": {"gpus": 1}}, docs) == [("a", 1.0), ("b", 1.0)]


def test_zero_vectors_score_zero() -> None:
    # "empty" has no gpus: its vector is 0 -> score 0, ranked last
    docs = [cluster("empty"), cluster("full", 8)]
    assert ranked({"target": {"gpus": 8}}, docs) == [("full", 1.0), ("empty", 0.0)]
    # a zero target scores everything 0, so the order is by id
    assert ranked({"target": {"gpus": 0}}, docs) == [("empty", 0.0), ("full", 0.0)]


def test_metrics_features() -> None:
    # x: free 1000, util mean(20, 60) = 40 (a node without the field is skipped)
    # y: free 500, no utilisation reported -> 0;  z: no metrics at all -> (0, 0)
    # scales: free 1000, util 40.  x (1, 1)  y (0.5, 0)  t (1/1000, 0)
    #   cos y = 1;  cos x = 0.001 / (sqrt(2) * 0.001) = 0.70711;  cos z = 0
    x_metrics = {
        "cluster": {"gpu": {"totalFreeMem": 1000}},
        "nodes": [
            {"gpu": {"avgCudaUtilization": 20}},
            {"gpu": {"avgCudaUtilization": 60}},
            {"gpu": {}},
        ],
    }
    y_metrics = {"cluster": {"gpu": {"totalFreeMem": 500}}, "nodes": []}
    docs = [
        {"id": "x", "cluster_metrics": x_metrics},
        {"id": "y", "cluster_metrics": y_metrics},
        {"id": "z", "cluster_metrics": None},
    ]
    assert FEATURES["gpu_utilization"](docs[0], x_metrics) == 40.0
    assert FEATURES["free_gpu_memory"](docs[1], y_metrics) == 500.0
    result = ranked({"target": {"free_gpu_memory": 1, "gpu_utilization": 0}}, docs)
    assert result == [("y", 1.0), ("x", pytest.approx(1 / math.sqrt(2))), ("z", 0.0)]


def test_cluster_features_read_the_contract_fields() -> None:
    doc = {
        "id": "c",
        "gpus": {"count": 3, "memory": 98304},
        "vcpus": {"count": 48},
        "memory": 393216,
        "reputation": 0.9,
    }
    values = {name: fn(doc, None) for name, fn in FEATURES.items()}
    assert values == {
        "gpus": 3.0,
        "gpu_memory": 98304.0,
        "vcpus": 48.0,
        "memory": 393216.0,
        "free_gpu_memory": 0.0,
        "gpu_utilization": 0.0,
        "reputation": 0.9,
    }
    # missing or non-numeric fields count as 0
    assert FEATURES["gpus"]({"gpus": {"count": "8"}}, None) == 0.0
    assert FEATURES["reputation"]({"reputation": True}, None) == 0.0


def test_without_target_ranks_by_reputation_then_id() -> None:
    docs = [
        cluster("b", reputation=0.5),
        cluster("c", reputation=0.9),
        cluster("a", reputation=0.5),
        cluster("d"),  # no reputation -> 0
    ]
    assert ranked({}, docs) == [("c", 0.9), ("a", 0.5), ("b", 0.5), ("d", 0.0)]


def test_documents_are_copied_with_their_fields() -> None:
    metrics = {"cluster": {"gpu": {"totalFreeMem": 7}}}
    docs = [{**cluster("a", 2), "cluster_metrics": metrics, "regionId": "eu-1"}]
    before = copy.deepcopy(docs)
    (out,) = policy().eval({"target": {"gpus": 1}}, docs, {})
    assert docs == before  # the input is not modified
    assert out == {**before[0], "similarity": 1.0}
    assert type(out["similarity"]) is float


def test_empty_input() -> None:
    assert policy().eval({"target": {"gpus": 1}}, [], {}) == []
    assert policy().eval({}, [], {}) == []


ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"target": {"colour": 1}}, f"{TARGET_PATH}.colour", "unknown feature"),
    ({"target": {"gpus": "8"}}, f"{TARGET_PATH}.gpus", "must be a finite number"),
    ({"target": {"gpus": True}}, f"{TARGET_PATH}.gpus", "must be a finite number"),
    ({"target": {"gpus": None}}, f"{TARGET_PATH}.gpus", "must be a finite number"),
    ({"target": {"gpus": float("inf")}}, f"{TARGET_PATH}.gpus", "must be a finite number"),
    ({"target": [8]}, TARGET_PATH, "non-empty object"),
    ({"target": {}}, TARGET_PATH, "non-empty object"),
    (
        {"target": {"gpus": 1}, "weights": {"gpus": -1}},
        "search.rankingPolicyRule.parameters.weights.gpus",
        "≥ 0",
    ),
    (
        {"target": {"gpus": 1}, "weights": {"size": 1}},
        "search.rankingPolicyRule.parameters.weights.size",
        "unknown feature",
    ),
]


@pytest.mark.parametrize(("params", "path", "fragment"), ERRORS)
def test_parameter_errors(params: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        policy().eval(params, [cluster("a", 1)], {})
    assert info.value.details["path"] == path
    assert fragment in info.value.message
    if "unknown feature" in fragment:
        assert "gpu_utilization" in info.value.message  # the valid names are listed


def test_stored_parameters_are_validated_at_load() -> None:
    with pytest.raises(InvalidRequest) as info:
        SimilarityPolicy("similarity:1.0-stable", {}, {"target": {"colour": 1}})
    assert info.value.details["path"] == f"{TARGET_PATH}.colour"


def test_input_must_be_a_list_of_documents() -> None:
    for bad in ({"cluster_data": {}}, [1, 2]):
        with pytest.raises(InvalidRequest) as info:
            policy().eval({}, bad, {})
        assert info.value.details["path"] == "search"


def test_management() -> None:
    assert policy().management("features", {}) == {"status": "success", "features": list(FEATURES)}
    assert set(FEATURES) == {
        "gpus",
        "gpu_memory",
        "vcpus",
        "memory",
        "free_gpu_memory",
        "gpu_utilization",
        "reputation",
    }
    assert policy().management("reload", {}) == {
        "status": "error",
        "message": "Unknown action 'reload'",
    }


fleet = st.lists(
    st.builds(
        lambda gpus, memory, rep: {"gpus": {"count": gpus}, "memory": memory, "reputation": rep},
        st.integers(0, 16),
        st.integers(0, 10**6),
        st.floats(0, 1),
    ),
    max_size=8,
).map(lambda ds: [{**d, "id": f"c{i % 3}{i}", "cluster_metrics": None} for i, d in enumerate(ds)])
targets = st.fixed_dictionaries(
    {},
    optional={
        "gpus": st.integers(0, 16),
        "memory": st.integers(0, 10**6),
        "reputation": st.floats(0, 1),
    },
).filter(bool)


@settings(max_examples=200)
@given(docs=fleet, target=targets, factor=st.floats(0.01, 100))
def test_ranking_invariants(
    docs: list[dict[str, Any]], target: dict[str, float], factor: float
) -> None:
    result = policy().eval({"target": target}, docs, {})
    # a permutation of the input, scores within [0, 1] (features are non-negative)
    assert sorted(d["id"] for d in result) == sorted(d["id"] for d in docs)
    scores = [d["similarity"] for d in result]
    assert all(-1e-12 <= s <= 1 + 1e-12 for s in scores)
    # sorted by score descending, ties by id ascending
    keys = [(-d["similarity"], d["id"]) for d in result]
    assert keys == sorted(keys)
    # cosine ignores the target's length: scaling it keeps every score
    scaled = {k: v * factor for k, v in target.items()}
    again = {d["id"]: d["similarity"] for d in policy().eval({"target": scaled}, docs, {})}
    for d in result:
        assert again[d["id"]] == pytest.approx(d["similarity"], abs=1e-9)
