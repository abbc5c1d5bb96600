"""The columnar fleet view: structure arrays, in-place state, counters, lazy rebuilds."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from apportion.registry import fleet as fleet_module
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import SegmentCounter
from tests import builders as b


def test_builder_documents_are_valid_cluster_documents() -> None:
    docs = [
        b.make_cluster("c1", 3, 8, domains=[[0, 1, 2, 3], [4, 5, 6, 7]]),
        b.cluster("c2", [b.node("a", gpus=2, models=["A100", "V100"], memories=[40960, 16384])]),
        b.cluster("c3", [b.node("z", gpus=0)]),
    ]
    for doc in docs:
        assert validate_cluster_document(doc)["id"] == doc["id"]


def test_structure_arrays_of_a_small_fleet() -> None:
    # c1: n0 with 2 GPUs (one NVLink domain [0,1]), n1 with 0 GPUs; c2: m0 with 3 mixed GPUs
    c1 = b.cluster(
        "c1", [b.node("n0", gpus=2, domains=[[0, 1]], vcpus=8), b.node("n1", gpus=0, vcpus=4)]
    )
    c2 = b.cluster(
        "c2",
        [b.node("m0", gpus=3, models=["A100", "V100", "A100"], memories=[40960, 16384, 40960])],
    )
    f = b.fleet_of(c1, c2)
    assert f.cluster_ids() == ["c1", "c2"]
    assert f.node_ids == ["n0", "n1", "m0"]
    assert f.node_cluster.tolist() == [0, 0, 1]
    assert f.node_gpu_count.tolist() == [2, 0, 3]
    assert f.node_gpu_start.tolist() == [0, 2, 2]  # 0, 0+2, 2+0
    assert f.node_vcpus.tolist() == [8, 4, 96]
    assert f.gpu_node.tolist() == [0, 0, 2, 2, 2]
    assert f.gpu_index.tolist() == [0, 1, 0, 1, 2]
    names = [f.model_names[m] for m in f.gpu_model]
    assert names == ["H100", "H100", "A100", "V100", "A100"]
    assert f.gpu_memory_mb.tolist() == [81920, 81920, 40960, 16384, 40960]
    assert f.gpu_domain.tolist() == [0, 0, -1, -1, -1]
    assert f.node_free.tolist() == [2, 0, 3]
    assert f.domain_free.tolist() == [2]
    assert f.gpu_row(("c2", "m0", "2")) == 4  # node start 2 + index 2
    assert f.gpu_row(("c2", "m0", "3")) is None
    assert f.gpu_row(("c2", "m0", "x")) is None
    assert f.node_row("c1", "n1") == 1
    assert f.cluster_index("c2") == 1
    assert f.cluster_index("nope") is None
    assert all(math.isnan(v) for v in f.metric_free_mb)


def test_node_rank_orders_rows_by_cluster_then_node_id() -> None:
    # inserted out of order: cluster "cb" first, and node "z" before "a" inside each
    cb = b.cluster("cb", [b.node("z", gpus=1), b.node("a", gpus=1)])
    ca = b.cluster("ca", [b.node("z", gpus=1), b.node("a", gpus=1)])
    f = b.fleet_of(cb, ca)
    # rows: cb/z, cb/a, ca/z, ca/a; sorted order: ca/a(0) ca/z(1) cb/a(2) cb/z(3)
    assert f.node_rank.tolist() == [3, 2, 1, 0]


def test_replacing_a_cluster_keeps_held_flags_of_gpus_that_still_exist() -> None:
    f = b.fleet_of(b.make_cluster("c0", 1, 2), b.make_cluster("c1", 2, 4))
    f.set_held([("c1", "n0", "3"), ("c1", "n1", "1"), ("c0", "n0", "0")], True)
    # replace c1: n0 shrinks to 2 GPUs (GPU 3 disappears), n1 unchanged
    f.set_cluster(b.cluster("c1", [b.node("n0", gpus=2), b.node("n1", gpus=4)]))
    assert f.held_keys() == {("c1", "n1", "1"), ("c0", "n0", "0")}
    assert f.node_free.tolist() == [1, 2, 3]  # c0/n0: 2-1, c1/n0: 2-0, c1/n1: 4-1


def test_remove_cluster_forgets_its_gpus_and_holds() -> None:
    f = b.fleet_of(b.make_cluster("c0", 1, 2), b.make_cluster("c1", 1, 2))
    f.set_held([("c0", "n0", "1"), ("c1", "n0", "0")], True)
    before = f.structure_version
    f.remove_cluster("c0")
    assert f.structure_version == before + 1
    assert f.cluster_ids() == ["c1"]
    assert f.held_keys() == {("c1", "n0", "0")}
    assert f.gpu_row(("c0", "n0", "1")) is None
    assert not f.is_held(("c0", "n0", "1"))
    f.remove_cluster("c0")  # unknown: ignored
    assert f.structure_version == before + 1


def test_apply_metrics_updates_the_arrays_in_place() -> None:
    f = b.fleet_of(b.make_cluster("c0", 2, 2), b.make_cluster("c1", 1, 2))
    _ = f.structure
    free, util, held = f.metric_free_mb, f.metric_util, f.held
    structure_version = f.structure_version
    doc = b.metrics("c1", {("n0", 1): 1000.0}, {("n0", 1): 55.0})
    doc["nodes"].append({"id": "ghost", "gpus": [{"gpu_id": 0, "freeMem": 1.0}]})
    doc["nodes"][0]["gpus"].append({"gpu_id": 9, "freeMem": 2.0})  # no GPU 9: ignored
    f.apply_metrics("c1", doc)
    assert f.metric_free_mb is free and f.metric_util is util and f.held is held
    assert f.structure_version == structure_version
    row = f.gpu_row(("c1", "n0", "1"))
    assert row == 5  # c0 has 2 nodes x 2 GPUs = rows 0..3; c1/n0 starts at 4
    assert free[row] == 1000.0 and util[row] == 55.0
    assert np.isnan(free[[0, 1, 2, 3, 4]]).all()
    f.apply_metrics("c1", doc, stale=True)
    assert np.isnan(free).all() and f.metric_free_mb is free
    f.apply_metrics("c1", doc)
    f.apply_metrics("c1", {**doc, "stale": True})
    assert np.isnan(free).all()
    f.apply_metrics("c1", doc)
    f.apply_metrics("c1", None)
    assert np.isnan(free).all()


def test_metrics_survive_a_rebuild_and_can_arrive_before_the_cluster() -> None:
    f = FleetView()
    f.apply_metrics("c1", b.metrics("c1", {("n0", 0): 500.0}))
    f.set_cluster(b.make_cluster("c0", 1, 2))
    f.set_cluster(b.make_cluster("c1", 1, 2))
    f.apply_metrics("c0", b.metrics("c0", {("n0", 1): 700.0}))
    f.set_cluster(b.make_cluster("c2", 1, 2))  # rebuild: c0's values are copied over
    f.set_cluster(b.make_cluster("c1", 1, 3))  # replace c1: its stored metrics re-applied
    free = f.structure and f.metric_free_mb
    assert free[f.gpu_row(("c1", "n0", "0"))] == 500.0
    assert free[f.gpu_row(("c0", "n0", "1"))] == 700.0
    assert int(np.count_nonzero(~np.isnan(free))) == 2


def test_set_held_ignores_unknown_keys_and_bumps_version() -> None:
    f = b.fleet_of(b.make_cluster("c0", 1, 4, domains=[[0, 1], [2, 3]]))
    v = f.version
    f.set_held([("c0", "n0", "2"), ("gone", "n0", "0"), ("c0", "n0", "7")], True)
    assert f.version > v
    assert f.is_held(("c0", "n0", "2")) and not f.is_held(("c0", "n0", "0"))
    assert f.node_free.tolist() == [3]
    assert f.domain_free.tolist() == [2, 1]
    f.set_held([("c0", "n0", "2"), ("c0", "n0", "2")], True)  # already held: no double count
    assert f.node_free.tolist() == [3]
    f.set_held([("c0", "n0", "2")], False)
    assert f.node_free.tolist() == [4] and f.domain_free.tolist() == [2, 2]


def test_from_cluster_data_uses_the_seed_format() -> None:
    c1 = b.make_cluster("c1", 1, 2)
    m1 = b.metrics("c1", {("n0", 0): 123.0})
    data = b.cluster_data(c1, b.make_cluster("c2", 1, 1), metrics={"c1": m1})
    f = FleetView.from_cluster_data(data)
    assert f.cluster_ids() == ["c1", "c2"]
    assert f.held_keys() == set()
    assert f.metric_free_mb[0] == 123.0 and np.isnan(f.metric_free_mb[1])


def _recount(f: FleetView) -> tuple[list[int], list[int]]:
    s = f.structure
    node = [int(s.node_gpu_count[i]) for i in range(s.n_nodes)]
    dom = [int(v) for v in s.domain_size]
    for row in np.flatnonzero(f.held):
        node[int(s.gpu_node[row])] -= 1
        if s.gpu_domain[row] >= 0:
            dom[int(s.gpu_domain[row])] -= 1
    return node, dom


_KEYS = hs.tuples(
    hs.sampled_from(["c0", "c1", "c2"]), hs.sampled_from(["n0", "n1"]), hs.sampled_from("01234")
)
_OPS = hs.one_of(
    hs.tuples(hs.just("hold"), hs.lists(_KEYS, max_size=6), hs.booleans()),
    hs.tuples(hs.just("metrics"), hs.sampled_from(["c0", "c1", "c2"]), hs.booleans()),
    hs.tuples(hs.just("set"), hs.sampled_from(["c0", "c1", "c2"]), hs.integers(0, 5)),
    hs.tuples(hs.just("remove"), hs.sampled_from(["c0", "c1", "c2"]), hs.none()),
)


@settings(max_examples=60, deadline=None)
@given(hs.lists(_OPS, max_size=25), hs.sampled_from([0, 32]))
def test_counters_and_holds_match_a_recomputation(
    ops: list[tuple[object, ...]], small_change: int
) -> None:
    # small_change 0 sends every set_held down the array path, 32 every one here the scalar path
    with patch.object(fleet_module, "_SMALL_CHANGE", small_change):
        _check_counters(ops)


def _check_counters(ops: list[tuple[object, ...]]) -> None:
    f = b.fleet_of(b.make_cluster("c0", 2, 4, domains=[[0, 1], [2, 3]]), b.make_cluster("c1", 1, 5))
    model = set()  # the held keys a straightforward model expects
    for op in ops:
        if op[0] == "hold":
            keys, held = op[1], op[2]
            known = {k for k in keys if f.gpu_row(k) is not None}  # type: ignore[arg-type]
            f.set_held(keys, bool(held))  # type: ignore[arg-type]
            model = model | known if held else model - known
        elif op[0] == "metrics":
            cid = str(op[1])
            f.apply_metrics(cid, b.metrics(cid, {("n0", 0): 10.0}), stale=bool(op[2]))
        elif op[0] == "set":
            cid, gpus = str(op[1]), int(op[2])  # type: ignore[call-overload]
            f.set_cluster(b.make_cluster(cid, 2, gpus, domains=[[0]] if gpus else None))
            model = {k for k in model if k[0] != cid or (k[1] in ("n0", "n1") and int(k[2]) < gpus)}
        else:
            f.remove_cluster(str(op[1]))
            model = {k for k in model if k[0] != op[1]}
        node, dom = _recount(f)
        assert f.node_free.tolist() == node
        assert f.domain_free.tolist() == dom
        assert f.held_keys() == model


@pytest.mark.parametrize("width", [0, 1, 2, 3, 4, 8, 16, 24])
def test_segment_counter_uniform_widths(width: int) -> None:
    rng = np.random.default_rng(width)
    sizes = np.full(7, width, dtype=np.int32)
    mask = rng.random(7 * width) < 0.5
    expected = [int(mask[i * width : (i + 1) * width].sum()) for i in range(7)]
    assert SegmentCounter(sizes, None)(mask).tolist() == expected


@settings(max_examples=80, deadline=None)
@given(hs.lists(hs.integers(0, 9), max_size=12), hs.randoms(use_true_random=False))
def test_segment_counter_agrees_with_a_loop(sizes: list[int], rnd: object) -> None:
    total = sum(sizes)
    mask = np.array([rnd.random() < 0.5 for _ in range(total + 3)], dtype=bool)  # type: ignore[attr-defined]
    rows = np.array(list(range(total))[::-1], dtype=np.int64)  # a permutation: reversed rows
    got = SegmentCounter(np.asarray(sizes, dtype=np.int32), rows)(mask).tolist()
    expected, at = [], 0
    for n in sizes:
        expected.append(int(sum(mask[rows[at : at + n]])))
        at += n
    assert got == expected


def test_min_per_node_uniform_and_mixed_domain_counts() -> None:
    uniform = b.fleet_of(b.make_cluster("c0", 3, 4, domains=[[0, 1], [2, 3]])).structure
    values = np.array([5, 3, 9, 9, 1, 7], dtype=np.int64)  # node0: min(5,3), node1: 9, node2: 1
    assert uniform.min_per_node(values, -1).tolist() == [3, 9, 1]
    mixed = b.fleet_of(
        b.cluster(
            "c0",
            [
                b.node("a", gpus=4, domains=[[0, 1], [2, 3]]),
                b.node("b", gpus=2),
                b.node("c", gpus=4, domains=[[0, 1, 2, 3]]),
            ],
        )
    ).structure
    values = np.array([8, 2, 6], dtype=np.int64)  # a: min(8,2)=2, b: none, c: 6
    assert mixed.min_per_node(values, -1).tolist() == [2, -1, 6]
