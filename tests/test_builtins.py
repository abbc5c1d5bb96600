"""The built-in policies as seed-format classes, and the parsing of their inputs."""

from __future__ import annotations

from typing import Any

import pytest

from apportion.engine.decisions import Placed, Placement
from apportion.engine.requests import GpuRequest, parse_inputs
from apportion.errors import InvalidRequest, NoFeasiblePlacement
from apportion.policies.builtins import (
    BINPACK,
    BUILTIN_POLICIES,
    BinpackPolicy,
    SpreadPolicy,
    TopologyPolicy,
)
from apportion.policies.catalog import builtin_catalog
from tests import builders as b

# ------------------------------------------------------------------ parse_inputs


def test_one_request_and_the_gang_form() -> None:
    rs, gang = parse_inputs({"gpus": 2, "gpu_model": "H100", "nvlink": True})
    assert not gang
    assert rs[0].gpus == 2 and rs[0].gpu_model == ("H100",) and rs[0].nvlink
    assert rs[0].raw == {"gpus": 2, "gpu_model": "H100", "nvlink": True}
    rs, gang = parse_inputs({"requests": [{"gpus": 1}, {"gpus": 0, "vcpus": 4}]})
    assert gang and [r.gpus for r in rs] == [1, 0] and rs[1].vcpus == 4
    assert parse_inputs({}) == ([GpuRequest(gpus=1, raw={})], False)
    assert parse_inputs(None)[0][0].gpus == 1
    rs, _ = parse_inputs({"gpu_model": ["A*", "V100"], "gpu_memory_mb": 1024, "memory_mb": 0})
    assert rs[0].gpu_model == ("A*", "V100") and rs[0].gpu_memory_mb == 1024


def test_node_filter_is_compiled() -> None:
    rs, _ = parse_inputs({"node_filter": {"variable": "id", "operator": "==", "value": "n1"}})
    assert rs[0].node_filter is not None
    assert rs[0].node_filter({"id": "n1"}) and not rs[0].node_filter({"id": "n2"})
    assert parse_inputs({"node_filter": {}})[0][0].node_filter is None


@pytest.mark.parametrize(
    ("inputs", "path", "words"),
    [
        ({"requests": [{"gpus": 1}, {"gpuz": 2}]}, "inputs.requests[1].gpuz",
         "valid fields: gpus, gpu_memory_mb"),
        ({"gpus": True}, "inputs.gpus", "must be an integer, not bool"),
        ({"gpus": "2"}, "inputs.gpus", "must be an integer, not str"),
        ({"gpus": -1}, "inputs.gpus", "between 0 and 1024"),
        ({"gpus": 1025}, "inputs.gpus", "between 0 and 1024"),
        ({"vcpus": 1.5}, "inputs.vcpus", "must be an integer, not float"),
        ({"memory_mb": -3}, "inputs.memory_mb", "at least 0"),
        ({"gpu_memory_mb": False}, "inputs.gpu_memory_mb", "not bool"),
        ({"gpu_model": []}, "inputs.gpu_model", "non-empty list"),
        ({"gpu_model": ["H100", 3]}, "inputs.gpu_model[1]", "non-empty string"),
        ({"nvlink": "yes"}, "inputs.nvlink", "true or false"),
        ({"requests": []}, "inputs.requests", "non-empty list of at most 256"),
        ({"requests": [{}] * 257}, "inputs.requests", "at most 256"),
        ({"requests": [{}], "gpus": 1}, "inputs.gpus", "cannot sit beside"),
        ({"requests": [3]}, "inputs.requests[0]", "must be an object"),
        ([1], "inputs", "must be an object"),
        ({"node_filter": {"variable": "id", "operator": "~", "value": 1}},
         "inputs.node_filter.operator", ""),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_field(inputs: Any, path: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_inputs(inputs)
    assert err.value.details["path"] == path
    assert words in err.value.message


# ------------------------------------------------------------------ the policies


def fleet_data() -> dict[str, dict[str, Any]]:
    doms = [[0, 1, 2, 3], [4, 5, 6, 7]]
    c1 = b.cluster("c1", [b.node("a", gpus=8, domains=doms), b.node("b", gpus=2)])
    c2 = b.make_cluster("c2", 1, 8)
    # c1/a: metrics say GPUs 0-5 have 100 MB free; the rest have no metric
    m1 = b.metrics("c1", {("a", i): 100.0 for i in range(6)})
    return b.cluster_data(c1, c2, metrics={"c1": m1})


@pytest.mark.parametrize(
    ("cls", "inputs", "expected"),
    [
        (BinpackPolicy, {"gpus": 2}, {"cluster_id": "c1", "node_id": "b", "gpus": ["0", "1"]}),
        (SpreadPolicy, {"gpus": 2}, {"cluster_id": "c1", "node_id": "a", "gpus": ["0", "1"]}),
        # topology: only a has domains; both leave 4-3=1 -> the lower domain (0..3)
        (TopologyPolicy, {"gpus": 3}, {"cluster_id": "c1", "node_id": "a", "gpus": ["0", "1", "2"]}),
        # free memory 1000: a has 2 available (6,7), b 2, c2 8 -> binpack a (0 left, before b)
        (BinpackPolicy, {"gpus": 2, "gpu_memory_mb": 1000},
         {"cluster_id": "c1", "node_id": "a", "gpus": ["6", "7"]}),
    ],
)  # fmt: skip
def test_eval_without_an_injected_fleet(cls: type, inputs: Any, expected: Any) -> None:
    policy = cls("rule-1", {}, {})
    assert policy.eval({}, {"cluster_data": fleet_data(), "inputs": inputs}, {}) == expected


def test_gang_answers_with_a_list() -> None:
    out = BinpackPolicy("r", {}, {}).eval(
        {}, {"cluster_data": fleet_data(), "inputs": {"requests": [{"gpus": 2}, {"gpus": 8}]}}, {}
    )
    # 2 -> c1/b (2-2=0); 8 -> a and c2 tie at 0 left -> c1/a
    assert out == [
        {"cluster_id": "c1", "node_id": "b", "gpus": ["0", "1"]},
        {"cluster_id": "c1", "node_id": "a", "gpus": [str(i) for i in range(8)]},
    ]


def test_the_internal_protocol_takes_engine_state_as_arguments() -> None:
    data = fleet_data()
    fleet = b.fleet_of(*(v["data"] for v in data.values()))
    fleet.set_held([("c1", "b", "0")], True)
    rs, _ = parse_inputs({"gpus": 1})
    out = BINPACK.place(fleet, ["c2"], rs, frozenset({("c2", "n0", "0")}))
    # only c2 is a candidate; its GPU 0 is unavailable -> GPU 1
    assert isinstance(out, Placed)
    assert out.placements == (Placement("c2", "n0", ("1",)),)
    assert out.evidence is not None and out.evidence.candidate_nodes == 1


def test_the_seed_face_reads_no_engine_state_from_settings() -> None:
    # engine-looking settings are the user's own: they change nothing
    inputs = {"cluster_data": fleet_data(), "inputs": {"gpus": 2}}
    settings = {"fleet": "not a fleet", "unavailable": [["c1", "b", "0"]], "outcome_sink": 1}
    plain = BinpackPolicy("r", {}, {}).eval({}, inputs, {})
    assert BinpackPolicy("r", settings, {}).eval({}, inputs, {}) == plain
    assert plain == {"cluster_id": "c1", "node_id": "b", "gpus": ["0", "1"]}


def test_infeasible_raises_with_reasons() -> None:
    policy = BinpackPolicy("r", {}, {})
    with pytest.raises(NoFeasiblePlacement) as err:
        policy.eval(
            {}, {"cluster_data": fleet_data(), "inputs": {"gpus": 4, "gpu_model": "A*"}}, {}
        )
    e = err.value
    assert e.message.startswith("no node can take 4 GPUs of model A* (the request): ")
    assert "3 nodes lack the model" in e.message
    assert e.details["summary"] == {"gpu_model": 3}
    assert e.details["failed_request"] == 0
    assert [r["node_id"] for r in e.details["rejections"]] == ["a", "b", "n0"]
    assert e.details["rejections"][0]["reasons"] == ["no GPU of model A*; node has H100"]
    with pytest.raises(NoFeasiblePlacement) as err:
        policy.eval({}, {"cluster_data": {}, "inputs": {"gpus": 1}}, {})
    assert "there are no candidate nodes" in err.value.message


def test_gang_failure_names_the_request() -> None:
    inputs = {"requests": [{"gpus": 8}, {"gpus": 8}, {"gpus": 8}]}
    with pytest.raises(NoFeasiblePlacement) as err:
        SpreadPolicy("r", {}, {}).eval({}, {"cluster_data": fleet_data(), "inputs": inputs}, {})
    # a and c2 take the first two; the third finds 2 nodes with 0 left and b with only 2
    assert err.value.details["failed_request"] == 2
    assert "(request 2 of the gang)" in err.value.message
    assert "3 nodes have too few available GPUs" in err.value.message


def test_management_and_registry() -> None:
    policy = TopologyPolicy("r", {}, {})
    desc = policy.management("describe", {})
    assert desc["status"] == "success" and desc["name"] == "topology"
    assert "nvlink" in desc["inputs"]["request_fields"]
    assert policy.management("reset", {}) == {
        "status": "error",
        "message": "Unknown action 'reset'",
    }
    assert {
        "binpack:1.0-stable": BinpackPolicy,
        "spread:1.0-stable": SpreadPolicy,
        "topology:1.0-stable": TopologyPolicy,
    } == BUILTIN_POLICIES
    catalog = builtin_catalog()
    for uri, cls in BUILTIN_POLICIES.items():  # the store calls the protocol, not eval
        assert catalog[uri].placer is cls.placement and catalog[uri].policy_class is cls
    assert catalog["similarity:1.0-stable"].placer is None
