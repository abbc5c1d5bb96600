"""HoldManager invariants: no GPU in two holds, durable holds, released GPUs come back.

Hypothesis drives random sequences of hold / release / expire over a real SQLite store and
compares the manager with a plain model (a dict of GPU → hold).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from apportion.allocation.hold import Hold
from apportion.allocation.holds import HoldManager
from apportion.engine.decisions import Placement
from apportion.errors import Conflict
from apportion.ownership import Owner
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.fleet import FleetView
from apportion.store import schema
from apportion.store.db import Database
from tests import builders

ALICE = Owner("team-a", "alice", "k")

GPUS = [("c1", f"n{n}", str(g)) for n in range(2) for g in range(4)]  # 2 nodes × 4 GPUs

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("hold"), st.sets(st.sampled_from(range(len(GPUS))), min_size=1, max_size=3)
        ),
        st.tuples(st.just("release"), st.integers(0, 20)),
        st.tuples(st.just("expire"), st.integers(0, 20)),
    ),
    max_size=25,
)


def placements(indices: set[int]) -> tuple[Placement, ...]:
    return builders.placements_of(GPUS, indices)


async def hold_now(holds: HoldManager, placements: tuple[Placement, ...], **fields: Any) -> Hold:
    """Reserve then commit, as the allocation service does for a hold."""
    hold = holds.reserve(placements, **fields)
    await holds.commit(hold)
    return hold


def two_node_fleet() -> FleetView:
    fleet = FleetView()
    fleet.set_cluster(validate_cluster_document(builders.make_cluster("c1", nodes=2, gpus=4)))
    return fleet


@asynccontextmanager
async def open_holds(url: str) -> AsyncIterator[tuple[HoldManager, Database]]:
    """A started HoldManager over a fresh two-node fleet and the database at ``url``."""
    db = await Database.open(url)
    holds = HoldManager(db, two_node_fleet())
    await holds.start()
    try:
        yield holds, db
    finally:
        await holds.close()
        await db.close()


async def count(db: Database, table: Any) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def run_sequence(steps: list[tuple[str, Any]], folder: Path) -> None:
    db = await Database.open(f"sqlite:///{folder}/h.db")
    fleet = FleetView()
    fleet.set_cluster(validate_cluster_document(builders.make_cluster("c1", nodes=2, gpus=4)))
    clock = Clock()
    holds = HoldManager(db, fleet, clock=clock)
    await holds.start()
    model: dict[tuple[str, str, str], str] = {}
    made: list[str] = []
    try:
        for kind, arg in steps:
            if kind == "hold":
                wanted = {GPUS[i] for i in arg}
                try:
                    hold = await hold_now(
                        holds,
                        placements(arg),
                        lease_seconds=10,
                        owner=None,
                        request_id=None,
                        policy_uri="p:1-x",
                    )
                except Conflict:
                    assert wanted & set(model), "Conflict although every GPU was free"
                    continue
                assert not wanted & set(model), "a GPU was held twice"
                model.update(dict.fromkeys(wanted, hold.allocation_id))
                made.append(hold.allocation_id)
            elif kind == "release" and made:
                allocation_id = made[arg % len(made)]
                if allocation_id in model.values():
                    await holds.release(allocation_id)
                    model = {k: v for k, v in model.items() if v != allocation_id}
            elif kind == "expire":
                clock.now += 11  # every lease (10 s) has ended
                await holds.expire_due()
                model.clear()
            # the fleet, the manager and the database agree with the model
            assert holds.held_keys() == set(model)
            assert {k for k in GPUS if fleet.is_held(k)} == set(model)
            async with db.read() as conn:
                rows = (
                    await conn.execute(select(func.count()).select_from(schema.hold_gpus))
                ).scalar()
            assert rows == len(model)
    finally:
        await holds.close()
        await db.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ops)
def test_no_gpu_is_ever_in_two_holds(steps: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run_sequence(steps, Path(folder)))


async def test_holds_survive_reopening_and_expired_ones_are_dropped(store_url: str) -> None:
    clock = Clock()
    fleet = FleetView()
    fleet.set_cluster(validate_cluster_document(builders.make_cluster("c1", nodes=2, gpus=4)))
    db = await Database.open(store_url)
    holds = HoldManager(db, fleet, clock=clock)
    await holds.start()
    long = await hold_now(
        holds,
        placements({0, 1}),
        lease_seconds=100,
        owner=ALICE,
        request_id="r",
        policy_uri="p:1-x",
    )
    await hold_now(
        holds, placements({2}), lease_seconds=5, owner=ALICE, request_id="s", policy_uri="p:1-x"
    )
    await holds.close()
    await db.close()

    clock.now += 10  # the short lease has ended while the server was down
    fresh = FleetView()
    fresh.set_cluster(validate_cluster_document(builders.make_cluster("c1", nodes=2, gpus=4)))
    db = await Database.open(store_url)
    again = HoldManager(db, fresh, clock=clock)
    dropped = await again.start()
    try:
        assert len(dropped) == 1
        assert [h.allocation_id for h in again.active()] == [long.allocation_id]
        assert again.active()[0].owner == ALICE  # whose it is survives too
        assert again.held_keys() == {GPUS[0], GPUS[1]}
        assert fresh.is_held(GPUS[0]) and not fresh.is_held(GPUS[2])
    finally:
        await again.close()
        await db.close()


async def test_concurrent_holds_and_releases_keep_the_store_in_step(store_url: str) -> None:
    # Many tasks race for 8 GPUs, each releasing what it got at once: a release and the next
    # hold of the same GPU often land in one group commit. None may fail but with Conflict,
    # and the database must end as empty as memory.
    import random

    chooser = random.Random(5)
    outcomes: list[str] = []
    async with open_holds(store_url) as (holds, db):

        async def worker(indices: set[int]) -> None:
            for _ in range(20):
                try:
                    hold = await hold_now(
                        holds,
                        placements(indices),
                        lease_seconds=60,
                        owner=None,
                        request_id=None,
                        policy_uri="p:1-x",
                    )
                except Conflict:
                    outcomes.append("conflict")
                    await asyncio.sleep(0)
                    continue
                outcomes.append("held")
                await holds.release(hold.allocation_id)

        await asyncio.gather(
            *(worker({chooser.randrange(8), chooser.randrange(8)}) for _ in range(30))
        )
        assert "held" in outcomes and len(outcomes) == 600
        assert holds.held_keys() == set()
        assert await count(db, schema.hold_gpus) == 0 and await count(db, schema.holds) == 0


async def test_a_hold_of_no_gpus_is_recorded(store_url: str) -> None:
    async with open_holds(store_url) as (holds, db):
        hold = await hold_now(
            holds,
            (Placement("c1", "n0", ()),),
            lease_seconds=60,
            owner=None,
            request_id=None,
            policy_uri="p:1-x",
        )
        assert await count(db, schema.holds) == 1 and await count(db, schema.hold_gpus) == 0
        await holds.release(hold.allocation_id)
        assert await count(db, schema.holds) == 0


async def test_a_job_hold_keeps_its_kind_across_a_restart(store_url: str) -> None:
    fleet = FleetView()
    fleet.set_cluster(validate_cluster_document(builders.make_cluster("c1", nodes=2, gpus=4)))
    db = await Database.open(store_url)
    holds = HoldManager(db, fleet)
    await holds.start()
    hold = holds.reserve(
        placements({0}),
        lease_seconds=60,
        owner=None,
        request_id="job-1",
        policy_uri="p:1-x",
        kind="job",
    )
    await holds.commit(hold)
    assert hold.kind == "job"
    await holds.close()
    again = HoldManager(db, fleet)
    await again.start()
    try:
        assert [h.kind for h in again.active()] == ["job"]
    finally:
        await again.close()
        await db.close()


async def test_a_hold_whose_caller_was_cancelled_is_undone_in_memory_and_in_the_store(
    store_url: str,
) -> None:
    # The insert is committed although its caller was cancelled (the journal's rule); nobody
    # learnt the hold's id, so the manager must release it: its GPUs free in the fleet now,
    # and no row left that a restart would load and hold until the lease ended.
    async with open_holds(store_url) as (holds, db):
        hold = holds.reserve(
            placements({0, 1}), lease_seconds=600, owner=None, request_id="r", policy_uri="p:1-x"
        )
        committing = asyncio.create_task(holds.commit(hold))
        await asyncio.sleep(0)  # handed over to the journal
        committing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await committing
        assert holds.held_keys() == set()
        await holds.close()  # drains the journal
        assert await count(db, schema.holds) == 0 and await count(db, schema.hold_gpus) == 0
