"""Output validation of policies: every failure kind, normalisation, pass-through keys."""

from __future__ import annotations

from typing import Any

import pytest

from apportion.engine.decisions import Decision, Placed, Placement, gpu_keys_of
from apportion.engine.validate import validate_output, validate_placements
from apportion.errors import InvalidPolicyOutput
from apportion.registry.fleet import FleetView
from tests import builders as b

URI = "custom:1.0-stable"


@pytest.fixture
def fleet() -> FleetView:
    f = b.fleet_of(b.make_cluster("c1", 2, 4), b.make_cluster("c2", 1, 2))
    f.set_held([("c1", "n1", "3")], True)
    return f


def typed(fleet: FleetView, output: Any, **kw: Any) -> tuple[Placement, ...]:
    args: dict[str, Any] = {
        "expected": None,
        "is_gang": False,
        "candidates": {"c1"},
        "fleet": fleet,
        "require_free": True,
        "policy_uri": URI,
    }
    args.update(kw)
    return validate_output(output, **args)


def check(fleet: FleetView, output: Any, **kw: Any) -> list[dict[str, Any]]:
    """The validated placements in their wire form."""
    return [p.to_json() for p in typed(fleet, output, **kw)]


def test_a_single_placement_is_returned_as_a_list_with_ids_normalised(fleet: FleetView) -> None:
    out = check(fleet, {"cluster_id": "c1", "node_id": "n0", "gpus": [0, "2"], "note": "x"})
    assert out == [{"cluster_id": "c1", "node_id": "n0", "gpus": ["0", "2"], "note": "x"}]


def test_cluster_only_and_node_only_placements_pass(fleet: FleetView) -> None:
    assert check(fleet, {"cluster_id": "c1"}) == [{"cluster_id": "c1"}]
    assert check(fleet, {"cluster_id": "c1", "node_id": "n1"})[0]["node_id"] == "n1"


def test_a_gang_is_a_list_of_the_expected_length(fleet: FleetView) -> None:
    gang = [
        {"cluster_id": "c1", "node_id": "n0", "gpus": ["0"]},
        {"cluster_id": "c1", "node_id": "n0", "gpus": ["1"]},
    ]
    assert check(fleet, gang, is_gang=True, expected=2) == gang
    placements = typed(fleet, gang, is_gang=True, expected=2)
    assert gpu_keys_of(placements) == [("c1", "n0", "0"), ("c1", "n0", "1")]


def test_held_gpus_pass_when_freedom_is_not_required(fleet: FleetView) -> None:
    out = check(fleet, {"cluster_id": "c1", "node_id": "n1", "gpus": ["3"]}, require_free=False)
    assert out[0]["gpus"] == ["3"]


@pytest.mark.parametrize(
    ("output", "kw", "index", "problem"),
    [
        ([], {}, None, "expected a placement object, got list"),
        ({"cluster_id": "c1"}, {"is_gang": True}, None, "expected a list of placements, got dict"),
        ([{"cluster_id": "c1"}], {"is_gang": True, "expected": 2}, None,
         "expected 2 placements (one per request), got 1"),
        (["c1"], {"is_gang": True}, 0, "expected an object, got str"),
        ({"node_id": "n0"}, {}, 0, "cluster_id is missing or not a string"),
        ({"cluster_id": "c2"}, {}, 0, 'cluster "c2" was not a candidate'),
        ({"cluster_id": "c1", "gpus": ["0"]}, {}, 0, "gpus given without node_id"),
        ({"cluster_id": "c1", "node_id": 5}, {}, 0, "node_id is not a string"),
        ({"cluster_id": "c1", "node_id": "n9"}, {}, 0, 'node "n9" does not belong to cluster "c1"'),
        ({"cluster_id": "c1", "node_id": "n0", "gpus": "0"}, {}, 0,
         "gpus must be a list of GPU ids, got str"),
        ({"cluster_id": "c1", "node_id": "n0", "gpus": [True]}, {}, 0,
         "GPU id True is not a GPU index"),
        ({"cluster_id": "c1", "node_id": "n0", "gpus": ["-1"]}, {}, 0,
         "GPU id '-1' is not a GPU index"),
        ({"cluster_id": "c1", "node_id": "n0", "gpus": ["4"]}, {}, 0,
         'GPU "4" does not exist on node "n0" of cluster "c1"'),
        ({"cluster_id": "c1", "node_id": "n0", "gpus": ["1", 1]}, {}, 0,
         'GPU "1" of node "n0" appears twice in the output'),
        ({"cluster_id": "c1", "node_id": "n1", "gpus": ["3"]}, {}, 0,
         'GPU "3" of node "n1" is already held'),
        ([{"cluster_id": "c1", "node_id": "n0", "gpus": ["0"]},
          {"cluster_id": "c1", "node_id": "n0", "gpus": ["0"]}], {"is_gang": True}, 1,
         'GPU "0" of node "n0" appears twice in the output'),
    ],
)  # fmt: skip
def test_every_failure_kind(
    fleet: FleetView, output: Any, kw: dict[str, Any], index: int | None, problem: str
) -> None:
    with pytest.raises(InvalidPolicyOutput) as err:
        check(fleet, output, **kw)
    details = err.value.details
    assert details["policy_rule_uri"] == URI
    assert details["index"] == index
    assert details["problem"] == problem
    assert URI in err.value.message and problem in err.value.message
    assert err.value.to_error()["code"] == "InvalidPolicyOutput"


def test_the_output_in_details_is_truncated(fleet: FleetView) -> None:
    with pytest.raises(InvalidPolicyOutput) as err:
        check(fleet, {"cluster_id": "nope", "junk": "x" * 5000})
    assert len(err.value.details["output"]) <= 501


def test_typed_placements_are_checked_against_the_registry_too(fleet: FleetView) -> None:
    args: dict[str, Any] = {"candidates": {"c1"}, "fleet": fleet, "policy_uri": URI}
    validate_placements([Placement("c1", "n0", ("0", "1"))], require_free=True, **args)
    with pytest.raises(InvalidPolicyOutput) as err:
        validate_placements([Placement("c1", "n1", ("3",))], require_free=True, **args)
    assert err.value.details["problem"] == 'GPU "3" of node "n1" is already held'
    assert err.value.details["output"] == repr(
        [{"cluster_id": "c1", "node_id": "n1", "gpus": ["3"]}]
    )


def test_placements_keep_their_wire_shape_through_the_journal(fleet: FleetView) -> None:
    # what a policy returned is what the hold journal stores and reloads, key for key
    outputs = [
        {"cluster_id": "c1"},
        {"cluster_id": "c1", "gpus": []},
        {"cluster_id": "c1", "node_id": "n0"},
        {"cluster_id": "c1", "node_id": "n0", "gpus": [1], "note": {"why": ["x"]}},
    ]
    for output in outputs:
        (placement,) = typed(fleet, output)
        wire = placement.to_json()
        expected = {**output, "gpus": ["1"]} if output.get("gpus") else output  # ids normalised
        assert wire == expected
        assert Placement.from_json(wire) == placement


def test_a_seed_policys_decision_record_has_no_kernel_findings() -> None:
    placed = Placed((Placement("c1", "n0", ("0",)),))
    record = Decision.of("custom:1.0-stable", 2, {"evaluate": 0.1}, placed).to_json()
    assert record == {
        "policy_rule_uri": "custom:1.0-stable",
        "candidate_clusters": 2,
        "timings_ms": {"evaluate": 0.1},
    }
