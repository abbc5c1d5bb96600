"""The placement kernels: strategies, tie-breaks, availability rules, gangs, rejections."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from pydantic import TypeAdapter

from apportion.engine.decisions import Decision, Outcome, Placed, Reason, Score, Unplaceable
from apportion.engine.explain import Evidence
from apportion.engine.placement import place
from apportion.engine.requests import GpuRequest, parse_inputs
from apportion.engine.stage import Strategy
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey
from tests import builders as b

BINPACK, SPREAD, TOPOLOGY = Strategy.BINPACK, Strategy.SPREAD, Strategy.TOPOLOGY


def reqs(inputs: Any) -> list[GpuRequest]:
    return parse_inputs(inputs)[0]


def hold(fleet: FleetView, cid: str, nid: str, *indices: int) -> None:
    fleet.set_held([(cid, nid, str(i)) for i in indices], True)


def run(
    fleet: FleetView, inputs: Any, strategy: Strategy = BINPACK, cands: Any = None, **kw: Any
) -> Outcome:
    return place(fleet, cands or fleet.cluster_ids(), reqs(inputs), strategy, **kw)


def ev(outcome: Outcome) -> Evidence:
    """What the kernel recorded (it always records)."""
    assert outcome.evidence is not None
    return outcome.evidence


def where(outcome: Outcome) -> list[tuple[str, str | None, list[str]]]:
    assert isinstance(outcome, Placed), ev(outcome).rejections()
    return [(p.cluster_id, p.node_id, list(p.gpus or ())) for p in outcome.placements]


@pytest.fixture
def three_nodes() -> FleetView:
    # c1: n0 has 2 free (6 held), n1 has 5 free (3 held: 0, 2, 4), n2 has 8 free
    f = b.fleet_of(b.make_cluster("c1", 3, 8))
    hold(f, "c1", "n0", 0, 1, 2, 3, 4, 5)
    hold(f, "c1", "n1", 0, 2, 4)
    return f


@pytest.mark.parametrize(
    ("gpus", "strategy", "node", "score"),
    [
        (2, BINPACK, "n0", 0),  # left: n0 2-2=0, n1 5-2=3, n2 8-2=6 -> fewest n0
        (4, BINPACK, "n1", 1),  # n0 cannot; n1 5-4=1, n2 8-4=4 -> n1
        (6, BINPACK, "n2", 2),  # only n2: 8-6=2
        (2, SPREAD, "n2", 6),  # most left: n2 8-2=6
        (5, SPREAD, "n2", 3),  # n1 5-5=0, n2 8-5=3 -> n2
        (0, BINPACK, "n0", 2),  # no GPUs: left = available, fewest n0 (2)
    ],
)
def test_binpack_and_spread_choose_by_gpus_left(
    three_nodes: FleetView, gpus: int, strategy: Strategy, node: str, score: int
) -> None:
    out = run(three_nodes, {"gpus": gpus}, strategy)
    assert where(out)[0][:2] == ("c1", node)
    assert ev(out).top_scores()[0] == Score("c1", node, score)
    assert ev(out).candidate_nodes == 3


def test_lowest_index_available_gpus_are_taken(three_nodes: FleetView) -> None:
    # n1 holds 0, 2, 4; binpack for 4 chooses n1 (5-4=1), free indices 1,3,5,6,7 -> first four
    assert where(run(three_nodes, {"gpus": 4}))[0] == ("c1", "n1", ["1", "3", "5", "6"])
    # unavailable (not held) GPUs are skipped the same way: n1 GPU 3 -> 1,5,6,7 (left 0)
    out = run(three_nodes, {"gpus": 4}, unavailable={("c1", "n1", "3")})
    assert where(out)[0] == ("c1", "n1", ["1", "5", "6", "7"])


def test_top_scores_are_sorted_best_first(three_nodes: FleetView) -> None:
    out = run(three_nodes, {"gpus": 1})
    # left: n0 2-1=1, n1 5-1=4, n2 8-1=7
    assert [(t.node_id, t.score) for t in ev(out).top_scores()] == [("n0", 1), ("n1", 4), ("n2", 7)]
    assert ev(out).feasible_nodes == 3


@pytest.mark.parametrize("strategy", [BINPACK, SPREAD, TOPOLOGY])
def test_ties_break_by_cluster_then_node_even_when_rows_are_out_of_order(
    strategy: Strategy,
) -> None:
    doms = [[0, 1, 2, 3]]
    cb = b.cluster("cb", [b.node("a", gpus=4, domains=doms)])
    ca = b.cluster("ca", [b.node("z", gpus=4, domains=doms), b.node("b", gpus=4, domains=doms)])
    f = b.fleet_of(cb, ca)  # rows: cb/a, ca/z, ca/b; all score the same
    out = run(f, {"gpus": 2}, strategy)
    assert where(out)[0] == ("ca", "b", ["0", "1"])
    assert [(t.cluster_id, t.node_id) for t in ev(out).top_scores()] == [
        ("ca", "b"),
        ("ca", "z"),
        ("cb", "a"),
    ]


def test_metrics_free_memory_rule() -> None:
    # n0: 8 GPUs, metrics say GPUs 0-5 have 1000 MB free (below 40000), 6-7 have 80000
    # n1: 8 GPUs, no metrics at all (NaN): all 8 count as available
    f = b.fleet_of(b.make_cluster("c1", 2, 8))
    free = {("n0", i): (1000.0 if i < 6 else 80000.0) for i in range(8)}
    f.apply_metrics("c1", b.metrics("c1", free))
    # binpack 2 GPUs of >= 40000 MB: n0 has 2 available (2-2=0), n1 8 (8-2=6) -> n0, GPUs 6, 7
    assert where(run(f, {"gpus": 2, "gpu_memory_mb": 40000}))[0] == ("c1", "n0", ["6", "7"])
    # 3 GPUs: n0 has only 2 -> n1
    assert where(run(f, {"gpus": 3, "gpu_memory_mb": 40000}))[0][1] == "n1"
    # without gpu_memory_mb the metric does not matter: n0 and n1 tie at 8 -> n0, GPUs 0-2
    assert where(run(f, {"gpus": 3}))[0] == ("c1", "n0", ["0", "1", "2"])
    # registry memory is a qualification: 81920 MB GPUs cannot serve 90000
    assert isinstance(run(f, {"gpus": 1, "gpu_memory_mb": 90000}), Unplaceable)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("A100", ("c1", "mixed", ["1", "3"])),  # mixed has A100 at 1 and 3
        ("H*", ("c1", "mixed", ["0", "2"])),  # mixed: H100+H200 (2-2=0) beats hopper (4-2=2)
        ("H1*", ("c1", "hopper", ["0", "1"])),  # mixed has a single H100 (index 0): too few
        (["V100", "A*"], ("c1", "mixed", ["1", "3"])),
        ("h100", None),  # case-sensitive
    ],
)
def test_model_globs(model: Any, expected: Any) -> None:
    f = b.fleet_of(
        b.cluster(
            "c1",
            [
                b.node("hopper", gpus=4, model="H100"),
                b.node("mixed", gpus=4, models=["H100", "A100", "H200", "A100"]),
            ],
        )
    )
    out = run(f, {"gpus": 2, "gpu_model": model})
    if expected:
        assert where(out)[0] == expected
    else:
        assert isinstance(out, Unplaceable)


def test_vcpus_memory_and_node_filter() -> None:
    f = b.fleet_of(
        b.cluster(
            "c1",
            [
                b.node("small", gpus=2, vcpus=8, memory_mb=1000, labels={"rack": "r1"}),
                b.node("big", gpus=8, vcpus=96, memory_mb=100000, labels={"rack": "r2"}),
            ],
        )
    )
    assert where(run(f, {"gpus": 1}))[0][1] == "small"  # binpack: 2-1=1 < 8-1=7
    assert where(run(f, {"gpus": 1, "vcpus": 16}))[0][1] == "big"
    assert where(run(f, {"gpus": 1, "memory_mb": 2000}))[0][1] == "big"
    flt = {"variable": "labels.rack", "operator": "==", "value": "r2"}
    assert where(run(f, {"gpus": 1, "node_filter": flt}))[0][1] == "big"
    out = run(f, {"gpus": 1, "vcpus": 200})
    assert isinstance(out, Unplaceable) and ev(out).summary() == {"vcpus": 2}


def test_candidates_limit_the_clusters() -> None:
    f = b.fleet_of(b.make_cluster("c1", 1, 2), b.make_cluster("c2", 1, 8))
    out = run(f, {"gpus": 1}, cands=["c2", "unknown"])
    assert where(out)[0][0] == "c2" and ev(out).candidate_nodes == 1
    out = run(f, {"gpus": 1}, cands=["unknown"])
    assert (
        isinstance(out, Unplaceable) and ev(out).candidate_nodes == 0 and ev(out).rejections() == []
    )


@pytest.fixture
def nvlink_fleet() -> FleetView:
    doms = [[0, 1, 2, 3], [4, 5, 6, 7]]
    f = b.fleet_of(
        b.cluster(
            "c1",
            [
                b.node("a", gpus=8, domains=doms),
                b.node("b", gpus=8, domains=doms),
                b.node("flat", gpus=8),
            ],
        )
    )
    hold(f, "c1", "a", 0)  # a: domain0 3 free, domain1 4 free
    hold(f, "c1", "b", 4, 5)  # b: domain0 4 free, domain1 2 free
    hold(f, "c1", "flat", 0, 1, 2, 3, 4, 5)  # flat: 2 free, no topology
    return f


@pytest.mark.parametrize(
    ("gpus", "expected", "score"),
    [
        (2, ("c1", "b", ["6", "7"]), 0),  # domains left: a0 1, a1 2, b0 2, b1 0 -> b1
        (3, ("c1", "a", ["1", "2", "3"]), 0),  # a0 3-3=0 -> a0
        (4, ("c1", "a", ["4", "5", "6", "7"]), 0),  # a1 0, b0 0 tie -> node a first
        (1, ("c1", "b", ["6"]), 1),  # b1: 2-1=1 ties a0? a0 3-1=2 -> b1 best
    ],
)
def test_topology_chooses_the_tightest_domain(
    nvlink_fleet: FleetView, gpus: int, expected: Any, score: int
) -> None:
    out = run(nvlink_fleet, {"gpus": gpus}, TOPOLOGY)
    assert where(out)[0] == expected
    assert ev(out).top_scores()[0].score == score
    assert "flat" not in {t.node_id for t in ev(out).top_scores()}


def test_nvlink_excludes_nodes_without_topology(nvlink_fleet: FleetView) -> None:
    # plain binpack for 2: flat 2-2=0 is tightest
    assert where(run(nvlink_fleet, {"gpus": 2}))[0][1] == "flat"
    # with nvlink, flat is out; node scores: a 7-2=5, b 6-2=4 -> b, inside its tightest domain b1
    out = run(nvlink_fleet, {"gpus": 2, "nvlink": True})
    assert where(out)[0] == ("c1", "b", ["6", "7"])
    # 5 GPUs cannot sit in one 4-GPU domain anywhere
    out = run(nvlink_fleet, {"gpus": 5, "nvlink": True})
    assert isinstance(out, Unplaceable)
    reasons = {r.node_id: r.reasons for r in ev(out).rejections()}
    assert reasons["a"] == ("no NVLink domain with 5 available GPUs (the largest has 4)",)
    assert reasons["flat"] == (
        "only 2 of 8 GPUs available (6 held), 5 needed",
        "node has no NVLink topology",
    )
    assert ev(out).summary() == {"nvlink": 3, "insufficient_gpus": 1}


def test_gang_places_without_overlap() -> None:
    f = b.fleet_of(b.make_cluster("c1", 2, 8))
    hold(f, "c1", "n0", 0, 1, 2, 3)  # n0 4 free, n1 8 free
    out = run(f, {"requests": [{"gpus": 4}, {"gpus": 4}, {"gpus": 2}]})
    # 1st: n0 4-4=0; 2nd: n0 has 0 now, n1 8-4=4; 3rd: n1 4-2=2
    assert where(out) == [
        ("c1", "n0", ["4", "5", "6", "7"]),
        ("c1", "n1", ["0", "1", "2", "3"]),
        ("c1", "n1", ["4", "5"]),
    ]
    assert f.held_keys() == {("c1", "n0", str(i)) for i in range(4)}  # place never holds


def test_gang_takes_node_capacity_into_account() -> None:
    f = b.fleet_of(b.make_cluster("c1", 2, 8, vcpus=96))
    out = run(f, {"requests": [{"gpus": 1, "vcpus": 60}, {"gpus": 1, "vcpus": 60}]})
    # n0 tie-break first; then n0 has 96-60=36 vCPUs < 60 -> n1
    assert [p[1] for p in where(out)] == ["n0", "n1"]


def test_gang_is_all_or_nothing() -> None:
    f = b.fleet_of(b.make_cluster("c1", 2, 8))
    hold(f, "c1", "n1", 0)  # n0 8 free, n1 7 free
    out = run(f, {"requests": [{"gpus": 8}, {"gpus": 8}]})
    assert isinstance(out, Unplaceable)
    assert out.failed_request == 1
    assert ev(out).feasible_nodes == 0
    assert [(r.node_id, r.reasons) for r in ev(out).rejections()] == [
        ("n0", ("only 0 of 8 GPUs available (8 taken by earlier requests), 8 needed",)),
        ("n1", ("only 7 of 8 GPUs available (1 held), 8 needed",)),
    ]


def test_rejection_texts_for_model_and_memory() -> None:
    f = b.fleet_of(
        b.cluster(
            "c1",
            [
                b.node("a100", gpus=2, model="A100", memory=40960),
                b.node("mix", gpus=2, models=["H100", "V100"], memories=[81920, 16384]),
                b.node("none", gpus=0),
            ],
        )
    )
    out = run(f, {"gpus": 1, "gpu_model": "H*", "gpu_memory_mb": 90000})
    assert [(r.node_id, r.kinds, r.reasons) for r in ev(out).rejections()] == [
        ("a100", ("gpu_model",), ("no GPU of model H*; node has A100",)),
        ("mix", ("gpu_memory",), ("GPUs have 81920 MB, 90000 needed",)),
        ("none", ("gpu_model",), ("no GPU of model H*; node has no GPUs",)),
    ]
    assert ev(out).summary() == {"gpu_model": 2, "gpu_memory": 1}
    out = run(f, {"gpus": 2, "gpu_memory_mb": 20000})
    mix = {r.node_id: r.reasons for r in ev(out).rejections()}["mix"]
    assert mix == ("only 1 of 2 GPUs available (1 not of the model or memory), 2 needed",)
    flt = {"variable": "id", "operator": "==", "value": "nobody"}
    out = run(f, {"gpus": 1, "node_filter": flt})
    assert ev(out).summary() == {"node_filter": 2, "insufficient_gpus": 1}
    assert ev(out).rejections(limit=1)[0].reasons == (
        "node does not match the request's node_filter",
    )


def test_free_memory_counts_in_rejection_text() -> None:
    f = b.fleet_of(b.make_cluster("c1", 1, 4))
    hold(f, "c1", "n0", 0)
    f.apply_metrics("c1", b.metrics("c1", {("n0", 1): 10.0, ("n0", 2): 10.0}))
    out = run(f, {"gpus": 2, "gpu_memory_mb": 1000}, unavailable={("c1", "n0", "3")})
    # 4 GPUs: 0 held, 1-2 below free-memory need, 3 unavailable -> 0 available
    assert ev(out).rejections()[0].reasons == (
        "only 0 of 4 GPUs available (1 held, 1 unavailable, 2 below free-memory need), 2 needed",
    )


def test_rejections_are_read_from_what_the_decision_recorded() -> None:
    # the explanation is rendered later (explain, errors) from the steps' masks, so a hold
    # taken after the decision does not leak into it
    f = b.fleet_of(b.make_cluster("c1", 1, 4))
    hold(f, "c1", "n0", 0)
    out = run(f, {"gpus": 4, "gpu_memory_mb": 1})  # a memory need: the GPU-mask path
    hold(f, "c1", "n0", 1)
    assert ev(out).rejections()[0].reasons == ("only 3 of 4 GPUs available (1 held), 4 needed",)
    assert ev(out).summary() == {Reason.INSUFFICIENT_GPUS: 1}


# ------------------------------------------------------------------ invariants (hypothesis)
MODELS = ["H100", "A100", "V100"]


@hs.composite
def fleets(draw: hs.DrawFn) -> tuple[FleetView, set[GpuKey], list[str]]:
    docs = []
    for ci in range(draw(hs.integers(1, 3))):
        nodes = []
        for ni in range(draw(hs.integers(0, 4))):
            g = draw(hs.integers(0, 6))
            split = draw(hs.integers(1, 3))
            doms = [list(range(i, min(g, i + split))) for i in range(0, g, split)]
            nodes.append(
                b.node(
                    f"n{ni}",
                    gpus=g,
                    models=[draw(hs.sampled_from(MODELS)) for _ in range(g)],
                    memories=[draw(hs.sampled_from([16384, 40960, 81920])) for _ in range(g)],
                    domains=doms if draw(hs.booleans()) and g else None,
                    vcpus=draw(hs.sampled_from([4, 32, 96])),
                )
            )
        docs.append(b.cluster(draw(hs.sampled_from(["a", "b", "c", "d"])) + str(ci), nodes))
    f = b.fleet_of(*draw(hs.permutations(docs)))
    keys = [
        (d["id"], n["id"], str(i))
        for d in docs
        for n in d["nodes"]["nodeData"]
        for i in range(n["gpus"]["count"])
    ]
    if keys:
        f.set_held(draw(hs.lists(hs.sampled_from(keys), max_size=6)), True)
        free = {(k[0], k[1], int(k[2])): draw(hs.sampled_from([0.0, 30000.0, 90000.0])) for k in
                draw(hs.lists(hs.sampled_from(keys), max_size=6))}  # fmt: skip
        for d in docs:
            f.apply_metrics(
                d["id"], b.metrics(d["id"], {(k[1], k[2]): v for k, v in free.items() if k[0] == d["id"]})
            )  # fmt: skip
    unavailable = set(draw(hs.lists(hs.sampled_from(keys), max_size=4))) if keys else set()
    cands = [d["id"] for d in docs if draw(hs.booleans())] or [docs[0]["id"]]
    return f, unavailable, cands


requests_st = hs.fixed_dictionaries(
    {"gpus": hs.integers(0, 5)},
    optional={
        "gpu_model": hs.sampled_from(["H100", "A*", ["V100", "H*"]]),
        "gpu_memory_mb": hs.sampled_from([20000, 50000]),
        "vcpus": hs.sampled_from([8, 50]),
        "nvlink": hs.booleans(),
    },
)


def _available(f: FleetView, key: GpuKey, r: GpuRequest, unavailable: set[GpuKey]) -> bool:
    row = f.gpu_row(key)
    assert row is not None
    model = f.model_names[int(f.gpu_model[row])]
    if r.gpu_model and not any(fnmatchcase(model, g) for g in r.gpu_model):
        return False
    mem = r.gpu_memory_mb
    if mem is not None and (f.gpu_memory_mb[row] < mem or f.metric_free_mb[row] < mem):
        return False  # NaN (no metric) compares False: ok
    return not f.is_held(key) and key not in unavailable


@settings(max_examples=150, deadline=None)
@given(fleets(), hs.lists(requests_st, min_size=1, max_size=3), hs.sampled_from(list(Strategy)))
def test_placement_invariants(
    fx: tuple[FleetView, set[GpuKey], list[str]], inputs: list[dict[str, Any]], strategy: Strategy
) -> None:
    f, unavailable, cands = fx
    rs = reqs({"requests": inputs})
    out = place(f, cands, rs, strategy, unavailable=unavailable)
    stage = ev(out).stage
    assert stage is not None
    rejected = ev(out).rejections(limit=10**6)
    # every rejected candidate node has a reason, and rejected + feasible = candidates
    assert all(r.reasons and len(r.reasons) == len(r.kinds) for r in rejected)
    assert len(rejected) + int(stage.ok.sum()) == ev(out).candidate_nodes
    assert sum(ev(out).summary().values()) >= len(rejected)
    assert all(r.cluster_id in cands for r in rejected)
    if isinstance(out, Unplaceable):
        assert out.failed_request is not None
        return
    used: set[GpuKey] = set()
    for p, r in zip(out.placements, rs, strict=True):
        assert p.cluster_id in cands
        keys = list(p.gpu_keys)
        assert len(keys) == r.gpus
        assert not used & set(keys), "a GPU in two placements of a gang"
        used |= set(keys)
        assert all(_available(f, k, r, unavailable) for k in keys)
        if r.gpus and (r.nvlink or strategy is TOPOLOGY):
            doms = {int(f.gpu_domain[f.gpu_row(k)]) for k in keys}  # type: ignore[index]
            assert len(doms) == 1 and -1 not in doms


def _reference(f: FleetView, cands: list[str], r: GpuRequest, strategy: Strategy) -> Any:
    """A straightforward single-request placement over the documents, for comparison."""
    best = None
    feasible = 0
    for cid in cands:
        doc = f.cluster_document(cid)
        assert doc is not None
        for node in doc["nodes"]["nodeData"]:
            nid = node["id"]
            n = node["gpus"]["count"]
            avail = [i for i in range(n) if _available(f, (cid, nid, str(i)), r, set())]
            if r.vcpus is not None and node["vcpus"]["count"] < r.vcpus:
                continue
            groups = [(len(avail) - r.gpus, 0, avail)]
            if r.gpus and (r.nvlink or strategy is TOPOLOGY):
                doms = (node["gpus"].get("topology") or {}).get("nvlinkDomains") or []
                sub = [[i for i in avail if i in d] for d in doms]
                fit = [(len(s) - r.gpus, min(d), s) for s, d in zip(sub, doms, strict=True)]
                fit = [x for x in fit if x[0] >= 0]
                if not fit:
                    continue
                tight = min(fit)
                groups = [(tight[0] if strategy is TOPOLOGY else len(avail) - r.gpus, *tight[1:])]
            left, first, chosen = groups[0]
            if len(chosen) < r.gpus:
                continue
            feasible += 1
            primary = -left if strategy is SPREAD else left
            key = (primary, cid, nid, first)
            if best is None or key < best[0]:
                best = (key, (cid, nid, [str(i) for i in chosen[: r.gpus]]))
    return feasible, None if best is None else best[1]


@settings(max_examples=150, deadline=None)
@given(fleets(), requests_st, hs.sampled_from(list(Strategy)))
def test_single_request_matches_a_reference(
    fx: tuple[FleetView, set[GpuKey], list[str]], inp: dict[str, Any], strategy: Strategy
) -> None:
    f, _unavailable, cands = fx
    r = reqs(inp)[0]
    out = place(f, cands, [r], strategy)
    feasible, expected = _reference(f, cands, r, strategy)
    assert ev(out).feasible_nodes == feasible
    got = where(out)[0] if isinstance(out, Placed) else None
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    fleets(),
    hs.lists(requests_st, min_size=1, max_size=3),
    hs.sampled_from([Strategy.BINPACK, Strategy.SPREAD]),
)
def test_the_fast_choice_is_the_keyed_choice(
    fx: tuple[FleetView, set[GpuKey], list[str]], inputs: list[dict[str, Any]], strategy: Strategy
) -> None:
    # Stage.choose skips the packed keys for simple stages; it must pick what argmin(keys) picks
    f, unavailable, cands = fx
    out = place(f, cands, reqs({"requests": inputs}), strategy, unavailable=unavailable)
    for st in {id(s): s for s in (ev(out).first, ev(out).stage) if s is not None}.values():
        keyed = None if st.feasible.size == 0 else int(st.feasible[int(np.argmin(st.keys))])
        everyone = bool(st.cand.all())
        assert st.choose(everyone) == keyed
        if everyone:  # the masked form must agree too
            assert st.choose(False) == keyed


def test_a_decision_record_is_stored_as_pydantic_would_and_read_back() -> None:
    """The stored form is written out by hand (a placement records one): it must be the
    schema's own dump — records stored before load — and give the same decision back."""
    f = b.fleet_of(b.make_cluster("c1", 3, 8))
    hold(f, "c1", "n1", 0)
    out = run(f, {"requests": [{"gpus": 8}]})
    assert isinstance(out, Placed)
    decision = Decision.of("builtin://pack", 1, {"policy": 0.5, "place": 1.25}, out)
    assert decision.rejected and decision.top_scores and decision.rejection_summary
    stored = decision.to_record()
    assert stored == TypeAdapter(Decision).dump_python(decision, mode="json")
    assert Decision.from_record(stored) == decision
    bare = Decision("https://policies.example/p", 2, {"policy": 1.0})
    assert bare.to_record() == TypeAdapter(Decision).dump_python(bare, mode="json")
    assert Decision.from_record(bare.to_record()) == bare
