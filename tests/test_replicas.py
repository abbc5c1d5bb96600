"""Servers sharing one PostgreSQL database (issue 11): the database arbitrates holds.

Each replica decides over its own view of the fleet; the unique constraint on held GPUs
decides between them. A replica whose hold the database refuses learns the holds it lost to,
decides again, and answers ``Conflict`` or ``NoFeasiblePlacement`` — never ``Internal`` — and no
GPU is ever in two holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import builders
from tests.conftest import Running, allocation, ask, running_server

GPUS = 8  # two nodes of four


@pytest.fixture
async def replicas(tmp_path: Path, postgres_db: str) -> AsyncIterator[list[Running]]:
    """Two servers on one PostgreSQL database, each with its own data dir; the cluster is
    registered through the first before the second starts (it loads it from the database)."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_server(tmp_path / "a", db=postgres_db))
        doc = builders.make_cluster("c1", nodes=2, gpus=4)
        async with first.http.post(f"{first.url}/clusters", json=doc) as response:
            assert response.status == 201, await response.text()
        second = await stack.enter_async_context(running_server(tmp_path / "b", db=postgres_db))
        yield [first, second]


async def hold_one(replica: Running) -> dict[str, Any]:
    async with replica.ws() as ws:
        return await ask(
            ws, allocation(adhoc=False, lease_seconds=600, clusters=["c1"], inputs={"gpus": 1})
        )


async def stored_gpus(url: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT cluster_id, node_id, gpu_id FROM hold_gpus")
    finally:
        await conn.close()
    return [(r["cluster_id"], r["node_id"], r["gpu_id"]) for r in rows]


async def test_holds_raced_through_two_replicas_never_share_a_gpu(
    replicas: list[Running], postgres_db: str
) -> None:
    answers = await asyncio.gather(*(hold_one(replicas[i % 2]) for i in range(3 * GPUS)))
    won = [a["data"] for a in answers if a["success"]]
    lost = [a["error"]["code"] for a in answers if not a["success"]]
    held = [(d["cluster_id"], d["node_id"], gpu) for d in won for gpu in d["gpus"]]
    assert len(held) == len(set(held)) == GPUS  # every GPU held once, none twice
    assert set(lost) <= {"Conflict", "NoFeasiblePlacement"}, lost
    assert sorted(await stored_gpus(postgres_db)) == sorted(held)


async def test_a_replica_that_lost_a_gpu_to_another_places_the_next_hold_elsewhere(
    replicas: list[Running],
) -> None:
    first, second = replicas
    # the first replica takes every GPU of node n00 (binpack fills one node first); the second
    # has not heard of those holds and decides for n00 too: the database refuses, the second
    # takes in the stored holds it did not know and decides again, over n01
    for _ in range(4):
        assert (await hold_one(first))["success"]
    again = await hold_one(second)
    assert again["success"], again
    assert again["data"]["node_id"] == "n1", again
    # the second now knows the first's holds as well as its own
    assert len(await active_holds(second)) == 5
    assert len(await active_holds(first)) == 4


async def active_holds(replica: Running) -> list[dict[str, Any]]:
    async with replica.http.get(f"{replica.url}/allocations") as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    return list(body["data"])
