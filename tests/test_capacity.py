"""Whether a gang could ever be placed (engine/capacity.py), the submit-time refusal of a job
that could never start: table tests over small fleets, with the arithmetic in each comment."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from apportion.engine.capacity import Capacity, gang_capacity
from apportion.engine.decisions import Placed
from apportion.engine.placement import place
from apportion.engine.requests import GpuRequest
from apportion.engine.stage import Strategy
from apportion.registry.fleet import FleetView
from tests import builders as b


def two_clusters() -> FleetView:
    """``east``: 2 nodes × 8 H100 (96 vCPUs); ``west``: 3 nodes × 4 A100 (16 vCPUs)."""
    return b.fleet_of(
        b.cluster("east", [b.node("e0"), b.node("e1")]),
        b.cluster("west", [b.node(f"w{i}", gpus=4, model="A100", vcpus=16) for i in range(3)]),
    )


@dataclass
class Row:
    comment: str
    request: GpuRequest
    workers: int
    expected: Capacity
    candidates: tuple[str, ...] = ("east", "west")


ROWS = [
    Row("east: 2 × 8 // 4 = 4; west: 3 × 4 // 4 = 3 → east, all 4", GpuRequest(gpus=4), 5,
        Capacity(4, "east")),
    Row("capped at what was asked: east could hold 4, 2 were asked", GpuRequest(gpus=4), 2,
        Capacity(2, "east")),
    Row("A100 only in west: 3 nodes × 4 // 2 = 6", GpuRequest(gpus=2, gpu_model=("A100",)), 9,
        Capacity(6, "west")),
    Row("9 GPUs: no node has more than 8 → none", GpuRequest(gpus=9), 1, Capacity(0, None)),
    Row("no B200 anywhere → none", GpuRequest(gpus=1, gpu_model=("B200",)), 1, Capacity(0, None)),
    Row("vCPUs bound: west 3 × min(4 // 1, 16 // 8) = 6; east 2 × min(8, 96 // 8) = 16",
        GpuRequest(gpus=1, vcpus=8), 99, Capacity(16, "east")),
    Row("east alone is a candidate: 2 × 8 // 4 = 4", GpuRequest(gpus=4), 9, Capacity(4, "east"),
        ("east",)),
    Row("a cluster not registered counts nothing", GpuRequest(gpus=1), 1, Capacity(0, None),
        ("ghost",)),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.comment for row in ROWS])
def test_gang_capacity(row: Row) -> None:
    fleet = two_clusters()
    assert gang_capacity(fleet.structure, row.candidates, row.request, row.workers) == (
        row.expected
    )


def test_of_equal_clusters_the_first_by_id_is_named() -> None:
    # "b" is registered first, "a" second; each holds 1 node × 8 // 8 = 1 worker
    fleet = b.fleet_of(b.cluster("b", [b.node("n")]), b.cluster("a", [b.node("n")]))
    assert gang_capacity(fleet.structure, ["b", "a"], GpuRequest(gpus=8), 2) == Capacity(1, "a")


def test_what_capacity_allows_the_placement_places_on_an_empty_fleet() -> None:
    # the refusal is never stricter than placement: a gang within capacity is placed
    fleet = two_clusters()
    request, workers = GpuRequest(gpus=2, gpu_model=("A100",)), 6
    assert gang_capacity(fleet.structure, ["west"], request, workers).workers == workers
    placed = place(fleet, ["west"], [request] * workers, Strategy.BINPACK)
    assert isinstance(placed, Placed), placed
