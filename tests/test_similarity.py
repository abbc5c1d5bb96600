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
    # target gpus 8, memory 100. Scales (largest |value| of survivors and target): gpus 8, memory 200.
    #   distances: a (0, 0)   b (4/8, 100/200) = (.5, .5)   c (0, 50/200) = (0, .25)
    #   score = 1 - sqrt(mean of d²): a 1;  b 1 - sqrt(.25) = .5;  c 1 - sqrt(.03125) = .82322
    docs = [cluster("b", 4, 200), cluster("c", 8, 50), cluster("a", 8, 100)]
    result = ranked({"target": {"gpus": 8, "memory": 100}}, docs)
    assert [cid for cid, _ in result] == ["a", "c", "b"]
    assert [score for _, score in result] == pytest.approx([1.0, 1 - math.sqrt(0.03125), 0.5])


def test_a_one_feature_target_ranks_by_closeness() -> None:
    # the defect: cosine over one feature scored every cluster 1.0, so the order was by id.
    # target gpu_memory 49152; scale 655360 (big's 8 x 81920)
    #   exact 0 -> 1;  mid |98304 - 49152| / 655360 = .075 -> .925;  big 606208 / 655360 -> .075
    docs = [
        {"id": "a-big", "gpus": {"memory": 655360}, "cluster_metrics": None},
        {"id": "b-mid", "gpus": {"memory": 98304}, "cluster_metrics": None},
        {"id": "c-exact", "gpus": {"memory": 49152}, "cluster_metrics": None},
    ]
    result = ranked({"target": {"gpu_memory": 49152}}, docs)
    assert result == [
        ("c-exact", 1.0),
        ("b-mid", pytest.approx(0.925)),
        ("a-big", pytest.approx(1 - 606208 / 655360)),
    ]


def test_weights_change_the_order() -> None:
    # target (4, 200), scales gpus 8, memory 200. distances: a (.5, .5)  b (0, 0)  c (0, .75)
    #   without weights: c = 1 - sqrt(.5625 / 2) = .46967 < a = .5
    #   weight gpus 4: a = 1 - sqrt((4 x .25 + .25) / 5) = .5;  c = 1 - sqrt(.5625 / 5) = .66459
    docs = [cluster("a", 8, 100), cluster("b", 4, 200), cluster("c", 4, 50)]
    assert ranked({"target": {"gpus": 4, "memory": 200}}, docs) == [
        ("b", 1.0),
        ("a", pytest.approx(0.5)),
        ("c", pytest.approx(1 - math.sqrt(0.5625 / 2))),
    ]
    weighted = ranked({"target": {"gpus": 4, "memory": 200}, "weights": {"gpus": 4}}, docs)
    assert weighted == [
        ("b", 1.0),
        ("c", pytest.approx(1 - math.sqrt(0.5625 / 5))),
        ("a", pytest.approx(0.5)),
    ]


def test_ties_break_by_id() -> None:
    # weight 0 on gpus leaves only memory, where all three match the target
    docs = [cluster("z", 8, 100), cluster("m", 4, 100), cluster("a", 2, 100)]
    result = ranked({"target": {"gpus": 8, "memory": 100}, "weights": {"gpus": 0}}, docs)
    assert result == [("a", 1.0), ("m", 1.0), ("z", 1.0)]
    # every weight 0: nothing counts, every score is 1
    zero = {"gpus": 0, "memory": 0}
    assert ranked({"target": {"gpus": 8, "memory": 1}, "weights": zero}, docs)[0] == ("a", 1.0)


def test_features_outside_the_target_are_ignored() -> None:
    docs = [cluster("b", 8, 1), cluster("a", 8, 999999)]
    assert ranked({"target": {"gpus": 8}}, docs) == [("a", 1.0), ("b", 1.0)]


def test_zero_values_are_distances_too() -> None:
    # "empty" has no gpus: distance 8/8 = 1 -> score 0; a zero target prefers it
    docs = [cluster("empty"), cluster("full", 8)]
    assert ranked({"target": {"gpus": 8}}, docs) == [("full", 1.0), ("empty", 0.0)]
    assert ranked({"target": {"gpus": 0}}, docs) == [("empty", 1.0), ("full", 0.0)]


def test_metrics_features() -> None:
    # x: free 1000, util mean(20, 60) = 40 (a node without the field is skipped)
    # y: free 500, no utilisation reported -> 0;  z: no metrics at all -> (0, 0)
    # target (500, 0); scales: free 1000, util 40.  distances: x (.5, 1)  y (0, 0)  z (.5, 0)
    #   y 1;  z 1 - sqrt(.25 / 2) = .64645;  x 1 - sqrt(1.25 / 2) = .20943
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
    result = ranked({"target": {"free_gpu_memory": 500, "gpu_utilization": 0}}, docs)
    assert result == [
        ("y", 1.0),
        ("z", pytest.approx(1 - math.sqrt(0.125))),
        ("x", pytest.approx(1 - math.sqrt(0.625))),
    ]


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
    (out,) = policy().eval({"target": {"gpus": 2}}, docs, {})
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
@given(docs=fleet, target=targets)
def test_ranking_invariants(docs: list[dict[str, Any]], target: dict[str, float]) -> None:
    result = policy().eval({"target": target}, docs, {})
    # a permutation of the input, scores within [0, 1] (features and target are non-negative)
    assert sorted(d["id"] for d in result) == sorted(d["id"] for d in docs)
    scores = [d["similarity"] for d in result]
    assert all(-1e-12 <= s <= 1 + 1e-12 for s in scores)
    # sorted by score descending, ties by id ascending
    keys = [(-d["similarity"], d["id"]) for d in result]
    assert keys == sorted(keys)
    # a cluster that is exactly the target scores 1 and comes first (before any id)
    exact = {
        "id": "~exact",
        "gpus": {"count": target.get("gpus", 0)},
        "memory": target.get("memory", 0),
        "reputation": target.get("reputation", 0.0),
        "cluster_metrics": None,
    }
    with_exact = policy().eval({"target": target}, [*docs, exact], {})
    at = [d["id"] for d in with_exact].index("~exact")
    assert with_exact[at]["similarity"] == 1.0
    assert all(d["similarity"] == 1.0 for d in with_exact[:at])  # only other exact matches
