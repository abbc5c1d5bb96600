"""Servers sharing one PostgreSQL database (issue 11): the database arbitrates holds, and each
server follows the holds made through the others.

Each replica decides over its own view of the fleet; the unique constraint on held GPUs
decides between them. A replica whose hold the database refuses takes in the stored holds it did
not know, decides again, and answers ``Conflict`` or ``NoFeasiblePlacement`` — never
``Internal`` — and no GPU is ever in two holds. Holds made, renewed and released through one
replica reach the others' views through PostgreSQL notices (``apportion.store.notices``); a
replica that lost its listening connection catches up when it reconnects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.allocation.holds import HoldManager
from apportion.errors import Conflict, UnknownAllocation
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.fleet import FleetView
from apportion.server.events import EventLog
from apportion.store import notices
from apportion.store.db import Database
from apportion.store.notices import NoticeFeed
from apportion.store.repos.holds import HoldRepo
from tests import builders
from tests.conftest import Running, allocation, ask, running_server
from tests.postgres_env import fresh_database
from tests.replica_servers import server_processes
from tests.test_policy_upload import RECORD, SEED_POLICY, push_metrics, tar_gz, upload

GPUS = 8  # two nodes of four
GPUS_OF_TWO = [("c1", f"n{n}", str(g)) for n in range(2) for g in range(4)]


@pytest.fixture
async def replicas(
    tmp_path: Path, postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[Running]]:
    """Two servers on one PostgreSQL database, each with its own data dir; the cluster is
    registered through the first before the second starts (it loads it from the database).
    A lost listening connection is made again after 2 s."""
    monkeypatch.setattr(notices, "RECONNECT_SECONDS", 2.0)
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


async def every_gpu_held_once(answers: list[dict[str, Any]], url: str) -> None:
    """The raced holds' ``answers`` hold every GPU once, none twice, as the store has them;
    the others were refused as a race is (never ``Internal``)."""
    won = [a["data"] for a in answers if a["success"]]
    lost = [a["error"]["code"] for a in answers if not a["success"]]
    held = [(d["cluster_id"], d["node_id"], gpu) for d in won for gpu in d["gpus"]]
    assert len(held) == len(set(held)) == GPUS
    assert set(lost) <= {"Conflict", "NoFeasiblePlacement"}, lost
    assert sorted(await stored_gpus(url)) == sorted(held)


async def test_holds_raced_through_two_replicas_never_share_a_gpu(
    replicas: list[Running], postgres_db: str
) -> None:
    answers = await asyncio.gather(*(hold_one(replicas[i % 2]) for i in range(3 * GPUS)))
    await every_gpu_held_once(answers, postgres_db)


async def test_holds_raced_through_three_server_processes_never_share_a_gpu(
    tmp_path: Path, postgres_db: str
) -> None:
    # three processes: each decides on its own core's time, and all at once
    async with server_processes(tmp_path, postgres_db, 3) as servers:
        doc = builders.make_cluster("c1", nodes=2, gpus=4)
        async with servers[0].running.http.post(
            f"{servers[0].running.url}/clusters", json=doc
        ) as response:
            assert response.status == 201, await response.text()

        async def every_server_knows_the_cluster() -> bool:
            for server in servers:
                async with server.running.http.get(f"{server.running.url}/clusters/c1") as r:
                    if r.status != 200:
                        return False
            return True

        await until(every_server_knows_the_cluster)
        answers = await asyncio.gather(*(hold_one(servers[i % 3].running) for i in range(3 * GPUS)))
    await every_gpu_held_once(answers, postgres_db)


async def test_a_replica_that_lost_a_gpu_to_another_places_the_next_hold_elsewhere(
    replicas: list[Running],
) -> None:
    first, second = replicas
    # the first replica takes every GPU of node n0 (binpack fills one node first); the second
    # has heard of those holds, or decides for n0 too and the database refuses (it then takes
    # in the stored holds it did not know and decides again): either way it places on n1
    for _ in range(4):
        assert (await hold_one(first))["success"]
    again = await hold_one(second)
    assert again["success"], again
    assert again["data"]["node_id"] == "n1", again

    async def both_know_all_five() -> bool:
        return [len(await active_holds(r)) for r in replicas] == [5, 5]

    await until(both_know_all_five)


async def active_holds(replica: Running) -> list[dict[str, Any]]:
    async with replica.http.get(f"{replica.url}/allocations") as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    return list(body["data"])


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> float:
    """Wait until ``check()`` holds; return how long it took (fails after ``seconds``)."""
    started = time.monotonic()
    for _ in range(int(seconds / 0.01)):
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds} s")


def ids(holds: list[dict[str, Any]]) -> set[str]:
    return {h["allocation_id"] for h in holds}


async def test_each_replica_follows_the_holds_made_renewed_and_released_through_another(
    replicas: list[Running],
) -> None:
    first, second = replicas
    made = await hold_one(first)
    assert made["success"], made
    aid = made["allocation_id"]

    async def second_knows() -> bool:
        return aid in ids(await active_holds(second))

    await until(second_knows)
    # renewed through the first: the second learns the new lease end
    async with first.ws() as ws:
        answer = await ask(ws, {"type": "renew", "allocation_id": aid, "lease_seconds": 3000})
    assert answer["success"], answer
    renewed = answer["data"]["expires_at"]

    async def second_has_the_new_lease() -> bool:
        holds = {h["allocation_id"]: h for h in await active_holds(second)}
        return holds[aid]["expires_at"] == renewed

    await until(second_has_the_new_lease)
    # released through the second (which did not make it): gone from both, its GPU free again
    async with second.http.delete(f"{second.url}/allocations/{aid}") as response:
        assert response.status == 200, await response.text()

    async def first_forgot() -> bool:
        return aid not in ids(await active_holds(first))

    await until(first_forgot)
    for _ in range(GPUS):  # every GPU can be held again, through the first
        assert (await hold_one(first))["success"]


async def test_a_replica_whose_listening_connection_was_cut_catches_up(
    replicas: list[Running], postgres_db: str
) -> None:
    first, second = replicas
    admin = await asyncpg.connect(postgres_db)
    try:
        # cut every server's listening connection; the first hold is made while they are
        # away (they reconnect after RECONNECT_SECONDS, set to 2 s below), so its notice is
        # lost: only the resync on reconnecting brings it in
        cut = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        )
        assert cut == 2
        made = await hold_one(first)
        assert made["success"], made
    finally:
        await admin.close()

    async def second_knows() -> bool:
        return made["allocation_id"] in ids(await active_holds(second))

    await until(second_knows)


async def test_each_replica_follows_clusters_and_metrics_stored_through_another(
    replicas: list[Running],
) -> None:
    first, second = replicas
    # a cluster registered through the second is placed on through the first
    doc = builders.make_cluster("c2", nodes=1, gpus=2)
    async with second.http.post(f"{second.url}/clusters", json=doc) as response:
        assert response.status == 201, await response.text()

    async def first_places_on_c2() -> bool:
        async with first.ws() as ws:
            answer = await ask(ws, allocation(clusters=["c2"], inputs={"gpus": 2}))
        return bool(answer["success"])

    await until(first_places_on_c2)
    # metrics pushed through the first are read through the second
    pushed = builders.metrics("c2", {("n0", 0): 1000.0, ("n0", 1): 2000.0})
    async with first.http.put(f"{first.url}/clusters/c2/metrics", json=pushed) as response:
        assert response.status == 200, await response.text()

    async def second_has_them() -> bool:
        async with second.http.get(f"{second.url}/cluster/c2") as response:  # seed 004's
            if response.status != 200:
                return False
            body = (await response.json())["data"]
        return [g["freeMem"] for g in body["nodes"][0]["gpus"]] == [1000.0, 2000.0]

    await until(second_has_them)
    # deleted through the first: gone from the second too
    async with first.http.delete(f"{first.url}/clusters/c2") as response:
        assert response.status in (200, 204), await response.text()

    async def second_forgot() -> bool:
        async with second.http.get(f"{second.url}/clusters/c2") as response:
            return response.status == 404

    await until(second_forgot)


async def test_events_appended_through_two_servers_share_one_sequence(postgres_db: str) -> None:
    logs = []
    databases = [await Database.open(postgres_db) for _ in range(2)]
    try:
        logs = [EventLog(db) for db in databases]
        appended = await asyncio.gather(*(logs[i % 2].append("x", {"i": i}) for i in range(200)))
        seqs = sorted(e["seq"] for e in appended)
        assert seqs == list(range(1, 201))  # none lost to a clash, none given twice
        assert [e["seq"] for e in await logs[1].since(0, limit=1000)] == seqs
    finally:
        for log in logs:
            await log.close()
        for db in databases:
            await db.close()


# ---------------------------------------------------------------- a hypothesis run

SERVERS = 3

rounds = st.lists(  # each round: holds and releases through any of the servers, all at once
    st.lists(
        st.one_of(
            st.tuples(
                st.just("hold"),
                st.integers(0, SERVERS - 1),
                st.sets(st.sampled_from(range(len(GPUS_OF_TWO))), min_size=1, max_size=3),
            ),
            st.tuples(st.just("release"), st.integers(0, SERVERS - 1), st.integers(0, 20)),
        ),
        min_size=1,
        max_size=6,
    ),
    min_size=1,
    max_size=6,
)


async def managers_of(url: str) -> tuple[list[HoldManager], list[NoticeFeed], list[Database]]:
    """:data:`SERVERS` servers' hold managers (their own fleet views) on one database, each
    following it."""
    managers, feeds, databases = [], [], []
    for _ in range(SERVERS):
        db = await Database.open(url)
        fleet = FleetView()
        fleet.set_cluster(validate_cluster_document(builders.make_cluster("c1", nodes=2, gpus=4)))
        holds = HoldManager(db, fleet)
        await holds.start()
        feed = NoticeFeed(db)
        holds.follow(feed)
        await feed.start()
        managers.append(holds)
        feeds.append(feed)
        databases.append(db)
    return managers, feeds, databases


async def run_rounds(url: str, plan: list[list[tuple[Any, ...]]]) -> None:
    managers, feeds, databases = await managers_of(url)
    answered: dict[str, set[tuple[str, str, str]]] = {}  # holds answered, not yet released
    try:
        for ops in plan:

            async def act(op: tuple[Any, ...]) -> None:
                kind, side, arg = op
                holds = managers[side]
                if kind == "hold":
                    wanted = builders.placements_of(GPUS_OF_TWO, arg)
                    try:
                        hold = holds.reserve(
                            wanted, lease_seconds=600, owner=None, request_id="r", policy_uri="p"
                        )
                        await holds.commit(hold)
                    except Conflict:  # held in memory, or the database refused: a "no"
                        return
                    answered[hold.allocation_id] = {GPUS_OF_TWO[i] for i in arg}
                elif answered:
                    allocation_id = sorted(answered)[arg % len(answered)]
                    try:
                        await holds.release(allocation_id)
                    except UnknownAllocation:  # this side has not heard of it (yet)
                        return
                    answered.pop(allocation_id, None)

            await asyncio.gather(*(act(op) for op in ops))
            # no GPU is in two holds that were answered and not released
            gpus = [gpu for held in answered.values() for gpu in held]
            assert len(gpus) == len(set(gpus)), answered
        # once the notices are in, every server sees exactly the stored holds
        stored = {row.allocation_id for row in await HoldRepo(databases[0]).all()}
        assert set(answered) <= stored
        for _ in range(200):
            views = [{h.allocation_id for h in m.active()} for m in managers]
            if views == [stored] * SERVERS:
                break
            await asyncio.sleep(0.01)
        assert views == [stored] * SERVERS
    finally:
        for feed in feeds:
            await feed.close()
        for holds in managers:
            await holds.close()
        for db in databases:
            await db.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=rounds)
def test_three_servers_racing_holds_never_share_a_gpu_and_agree_with_the_store(
    plan: list[list[tuple[Any, ...]]], postgres: str
) -> None:
    asyncio.run(fresh_database_run(postgres, plan))


async def fresh_database_run(server_url: str, plan: list[list[tuple[Any, ...]]]) -> None:
    async with fresh_database(server_url) as url:
        await run_rounds(url, plan)


async def test_a_key_revoked_through_one_server_is_refused_by_the_other_at_once(
    replicas: list[Running],
) -> None:
    first, second = replicas
    async with first.http.post(f"{first.url}/keys", json={"name": "brief"}) as response:
        assert response.status == 201, await response.text()
        issued = (await response.json())["data"]
    headers = {"Authorization": f"Bearer {issued['api_key']}"}
    async with second.http.get(f"{second.url}/jobs", headers=headers) as response:
        assert response.status == 200  # verified, and cached for 60 s by the second
    async with first.http.delete(f"{first.url}/keys/{issued['key_id']}") as response:
        assert response.status == 200, await response.text()

    async def refused() -> bool:
        async with second.http.get(f"{second.url}/jobs", headers=headers) as response:
            return response.status == 401

    assert await until(refused, seconds=5.0) < 5.0  # not the cache's 60 s


async def test_an_account_made_through_one_server_is_known_to_the_other(
    replicas: list[Running],
) -> None:
    first, second = replicas
    body = {"name": "vision-lab", "description": "made through the first"}
    async with first.http.post(f"{first.url}/accounts", json=body) as response:
        assert response.status == 201, await response.text()

    async def second_issues_a_key_of_it() -> bool:
        key = {"name": "alice", "account": "vision-lab"}
        async with second.http.post(f"{second.url}/keys", json=key) as response:
            return response.status == 201

    await until(second_issues_a_key_of_it)
    async with first.http.patch(f"{first.url}/accounts/vision-lab", json={"shares": 7}) as r:
        assert r.status == 200, await r.text()

    async def second_has_its_shares() -> bool:
        async with second.http.get(f"{second.url}/accounts") as response:
            accounts = {a["name"]: a for a in (await response.json())["data"]}
        return accounts["vision-lab"]["shares"] == 7

    await until(second_has_its_shares)


async def test_a_policy_uploaded_through_one_server_is_run_by_the_other(
    replicas: list[Running],
) -> None:
    first, second = replicas
    await push_metrics(first, "c1")  # the seed-style policy reads them
    response = await upload(first, RECORD, tar_gz(SEED_POLICY), "policy.tar.gz")
    assert response.status == 201, await response.text()
    uri = "seed-first-fit:1.0-beta"
    request = allocation(policy_rule_uri=uri, inputs={"gpus": 1}, clusters=["c1"])

    async def second_runs_it() -> bool:
        async with second.ws() as ws:
            answer = await ask(ws, request)
        assert answer["success"] or answer["error"]["code"] == "UnknownPolicy", answer
        return bool(answer["success"])

    await until(second_runs_it)  # its code unpacked from the database, in its own sandbox
    async with first.http.delete(f"{first.url}/policies/{uri}") as response:
        assert response.status == 200, await response.text()

    async def second_forgot_it() -> bool:
        async with second.ws() as ws:
            answer = await ask(ws, request)
        return not answer["success"] and answer["error"]["code"] == "UnknownPolicy"

    await until(second_forgot_it)
    again = await upload(second, RECORD, tar_gz(SEED_POLICY), "policy.tar.gz")
    assert again.status == 409, await again.text()  # a deleted URI stays taken, on every server
