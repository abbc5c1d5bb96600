"""One ownership rule (apportion.ownership): a key sees its own account's jobs and holds and
changes those its own user made; an operator key sees every account's, an admin key sees and
changes everything; a record the server made (no user) is changed by admins only.

Before accounts, a key saw only what it had made itself, and a ``read`` key saw no job at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from apportion.allocation.hold import Hold
from apportion.engine.decisions import Placement
from apportion.errors import Forbidden, UnknownAllocation
from apportion.ownership import DEFAULT_ACCOUNT, Actor, Owner
from apportion.server.context import ServerContext
from tests.conftest import Running, allocation, ask
from tests.jobs_helpers import sleeper

ALICE_A = Owner("team-a", "alice", "k1")
SERVER = Owner(DEFAULT_ACCOUNT, None, None)


def actor(account: str, user: str, *, sees_all: bool = False, is_admin: bool = False) -> Actor:
    return Actor("k", account, user, sees_all=sees_all or is_admin, is_admin=is_admin)


@pytest.mark.parametrize(
    ("who", "owner", "sees", "changes"),
    [
        (actor("team-a", "alice"), ALICE_A, True, True),  # her own
        (actor("team-a", "bob"), ALICE_A, True, False),  # her teammate: sees, cannot change
        (actor("team-b", "alice"), ALICE_A, False, False),  # same user name, other account
        (actor("team-b", "op", sees_all=True), ALICE_A, True, False),  # an operator reads all
        (actor("team-b", "root", is_admin=True), ALICE_A, True, True),  # an admin does all
        (actor(DEFAULT_ACCOUNT, "carol"), SERVER, True, False),  # the server's: admins change
        (actor(DEFAULT_ACCOUNT, "carol", is_admin=True), SERVER, True, True),
        (actor("team-a", "alice"), None, False, False),  # no owner at all
        (actor("team-a", "alice", sees_all=True), None, True, False),
    ],
)
def test_the_rule(who: Actor, owner: Owner | None, sees: bool, changes: bool) -> None:
    assert who.may_see(owner) is sees
    assert who.may_change(owner) is changes


def context_of(running: Running) -> ServerContext:
    assert running.server.context is not None
    return running.server.context


async def make_account(running: Running, name: str, **fields: Any) -> None:
    async with running.http.post(f"{running.url}/accounts", json={"name": name, **fields}) as r:
        assert r.status == 201, await r.text()


async def make_key(running: Running, name: str, scope: str, account: str, **fields: Any) -> str:
    body = {"name": name, "scope": scope, "account": account, **fields}
    async with running.http.post(f"{running.url}/keys", json=body) as response:
        assert response.status == 201, await response.text()
        data = (await response.json())["data"]
    assert (data["account"], data["scope"]) == (account, scope)
    secret: str = data["api_key"]
    return secret


class Keys:
    """Sessions of four keys: alice and bob in team-a, carol in team-b, an operator in team-b."""

    def __init__(self, sessions: dict[str, aiohttp.ClientSession]) -> None:
        self.alice = sessions["alice"]
        self.bob = sessions["bob"]
        self.carol = sessions["carol"]
        self.operator = sessions["operator"]
        self.reader_a = sessions["reader_a"]


@pytest.fixture
async def keys(running: Running) -> AsyncIterator[Keys]:
    await make_account(running, "team-a", description="the A team")
    await make_account(running, "team-b")
    specs = {
        "alice": ("submit", "team-a"),
        "bob": ("submit", "team-a"),
        "carol": ("submit", "team-b"),
        "operator": ("operator", "team-b"),
        "reader_a": ("read", "team-a"),
    }
    sessions = {}
    try:
        for name, (scope, account) in specs.items():
            secret = await make_key(running, name, scope, account)
            sessions[name] = aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"})
        yield Keys(sessions)
    finally:
        for session in sessions.values():
            await session.close()


async def submit(session: aiohttp.ClientSession, url: str) -> str:
    # queued (no fleet to run on): enough to be listed, read and cancelled
    async with session.post(f"{url}/jobs/submit", json={"config": {"command": sleeper(0)}}) as r:
        assert r.status == 201, await r.text()
        job_id: str = (await r.json())["job_id"]
    return job_id


async def job_ids(session: aiohttp.ClientSession, url: str) -> set[str]:
    async with session.get(f"{url}/jobs") as response:
        assert response.status == 200
        return {j["job_id"] for j in await response.json()}


async def test_a_key_sees_its_accounts_jobs_and_changes_its_users_own(
    running: Running, keys: Keys
) -> None:
    url = running.url
    alices = await submit(keys.alice, url)
    bobs = await submit(keys.bob, url)
    carols = await submit(keys.carol, url)
    team_a = {alices, bobs}

    assert await job_ids(keys.alice, url) == team_a
    assert await job_ids(keys.reader_a, url) == team_a  # a read key sees its account's jobs
    assert await job_ids(keys.carol, url) == {carols}
    assert await job_ids(keys.operator, url) == team_a | {carols}  # an operator reads all
    async with keys.alice.get(f"{url}/jobs/{bobs}") as response:
        record = await response.json()
    assert (record["account"], record["user"]) == ("team-a", "bob")
    async with keys.alice.get(f"{url}/dashboard/jobs") as response:
        assert {j["job_id"] for j in (await response.json())["jobs"]} == team_a

    # another account's job answers as an unknown id, on every route
    for method, path in [
        ("GET", f"/jobs/{carols}"),
        ("GET", f"/jobs/{carols}/statuses"),
        ("GET", f"/jobs/{carols}/logs"),
        ("POST", f"/jobs/{carols}/cancel"),
        ("DELETE", f"/jobs/{carols}"),
    ]:
        async with keys.alice.request(method, f"{url}{path}") as response:
            assert response.status == 404, (method, path)
            assert "carol" not in await response.text()
    # a teammate's job is seen but not changed
    async with keys.alice.post(f"{url}/jobs/{bobs}/cancel") as response:
        body = await response.json()
        assert response.status == 403, body
    assert "bob" in body["message"]
    async with keys.operator.post(f"{url}/jobs/{carols}/cancel") as response:
        assert response.status == 403  # the operator scope only reads
    async with keys.reader_a.post(f"{url}/jobs/{alices}/cancel") as response:
        assert response.status == 403  # a read key changes nothing
    async with keys.alice.post(f"{url}/jobs/{alices}/cancel") as response:
        assert response.status == 200
    async with running.http.post(f"{url}/jobs/{carols}/cancel") as response:
        assert response.status == 200  # the admin changes everything


async def test_a_job_the_server_submitted_is_changed_by_admins_only(
    running: Running, keys: Keys
) -> None:
    service = context_of(running).jobs
    assert service is not None
    demo = await service.submit({"config": {"command": sleeper(0)}}, SERVER)
    async with keys.alice.get(f"{running.url}/jobs/{demo.job_id}") as response:
        assert response.status == 404  # in the default account, not team-a's
    async with running.http.post(f"{running.url}/keys", json={"name": "dee"}) as response:
        secret = (await response.json())["data"]["api_key"]  # a submit key of `default`
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as dee:
        async with dee.get(f"{running.url}/jobs/{demo.job_id}") as response:
            assert response.status == 200
        async with dee.post(f"{running.url}/jobs/{demo.job_id}/cancel") as response:
            assert response.status == 403
    async with running.http.post(f"{running.url}/jobs/{demo.job_id}/cancel") as response:
        assert response.status == 200


async def server_hold(running: Running, fleet: list[dict[str, Any]], owner: Owner) -> Hold:
    """A hold on one GPU of the demo fleet, made directly through the hold manager."""
    holds = context_of(running).holds
    node = fleet[0]["nodes"]["nodeData"][0]["id"]
    hold = holds.reserve(
        (Placement(fleet[0]["id"], node, ("0",)),),
        lease_seconds=600,
        owner=owner,
        request_id=None,
        policy_uri="binpack:1.0-stable",
    )
    await holds.commit(hold)
    return hold


async def test_holds_follow_the_same_rule(
    running: Running, fleet: list[dict[str, Any]], keys: Keys
) -> None:
    url = running.url
    hold = await server_hold(running, fleet, Owner("team-a", "bob", None))
    aid = hold.allocation_id
    async with keys.alice.get(f"{url}/allocations") as response:
        listed = (await response.json())["data"]
    assert [(h["allocation_id"], h["account"], h["user"]) for h in listed] == [
        (aid, "team-a", "bob")
    ]
    async with keys.carol.get(f"{url}/allocations") as response:
        assert (await response.json())["data"] == []
    for method in ("GET", "DELETE"):  # another account's hold: as an unknown id
        async with keys.carol.request(method, f"{url}/allocations/{aid}") as response:
            assert response.status == 404, method
            assert (await response.json())["error"]["code"] == "UnknownAllocation"
    async with keys.alice.delete(f"{url}/allocations/{aid}") as response:
        assert response.status == 403  # bob's, in alice's account
    holds = context_of(running).holds
    with pytest.raises(UnknownAllocation):  # the WebSocket's path: no oracle either
        await holds.release(aid, actor=actor("team-b", "carol"))
    with pytest.raises(Forbidden):
        await holds.renew(aid, 60, actor=actor("team-a", "alice"))
    assert [h.allocation_id for h in holds.active()] == [aid]
    await holds.renew(aid, 60, actor=actor("team-a", "bob"))
    async with keys.operator.get(f"{url}/allocations/{aid}") as response:
        assert response.status == 200
    async with running.http.delete(f"{url}/allocations/{aid}") as response:
        assert response.status == 200
    assert holds.active() == []


@pytest.mark.usefixtures("fleet")
async def test_a_hold_made_over_the_websocket_belongs_to_the_keys_account_and_user(
    running: Running,
) -> None:
    await make_account(running, "team-a")
    secret = await make_key(running, "alice-laptop", "submit", "team-a", user="alice")
    async with running.ws(secret) as socket:
        answer = await ask(socket, allocation(adhoc=False, lease_seconds=60))
    assert answer["success"], answer
    hold = context_of(running).holds.get(answer["allocation_id"])
    assert hold.owner is not None
    assert (hold.owner.account, hold.owner.user) == ("team-a", "alice")


async def test_the_fleet_view_shows_every_gpu_taken_but_only_ones_own_holders(
    running: Running, fleet: list[dict[str, Any]], keys: Keys
) -> None:
    # the dashboard's GET /fleet named every holder (job ids, allocation ids) to every key
    hold = await server_hold(running, fleet, Owner("team-a", "alice", None))
    node = fleet[0]["nodes"]["nodeData"][0]["id"]

    async def gpu0(session: aiohttp.ClientSession) -> list[Any]:
        async with session.get(f"{running.url}/fleet") as response:
            snapshot = await response.json()
        (cluster,) = [c for c in snapshot["clusters"] if c["id"] == fleet[0]["id"]]
        (row,) = [n for n in cluster["nodes"] if n["id"] == node]
        gpu: list[Any] = row["gpus"][0]
        return gpu

    fields = ("index", "model", "memory_mb", "state", "util", "free_mb", "holder")
    for session, holder in (
        (keys.alice, hold.allocation_id),  # her account's
        (keys.operator, hold.allocation_id),  # an operator reads every account
        (keys.carol, None),  # another account: taken, by whom is not said
    ):
        seen = dict(zip(fields, await gpu0(session), strict=True))
        assert (seen["state"], seen["holder"]) == ("held", holder)
