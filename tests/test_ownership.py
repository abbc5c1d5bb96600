"""One ownership rule (apportion.ownership): an admin acts on everything, another key on what
it owns, and a record without an owner (made before keys existed, or by the server) is an
admin's only. Before, the three places disagreed: owner-less jobs were visible to every key,
owner-less holds to admins only, and any submit key could release or renew an owner-less hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from apportion.allocation.hold import Hold
from apportion.engine.decisions import Placement
from apportion.errors import Forbidden
from apportion.ownership import may_act_on
from apportion.server.context import ServerContext
from tests.conftest import Running
from tests.jobs_helpers import sleeper


@pytest.mark.parametrize(
    ("owner", "key_id", "is_admin", "allowed"),
    [
        ("k1", "k1", False, True),  # its owner
        ("k1", "k2", False, False),  # another key
        ("k1", "k2", True, True),  # an admin
        (None, "k2", False, False),  # owner-less: not for a non-admin key
        (None, None, False, False),  # not even for a caller without a key id
        (None, "k2", True, True),  # owner-less: an admin's
    ],
)
def test_the_rule(owner: str | None, key_id: str | None, is_admin: bool, allowed: bool) -> None:
    assert may_act_on(owner, key_id=key_id, is_admin=is_admin) is allowed


def context_of(running: Running) -> ServerContext:
    assert running.server.context is not None
    return running.server.context


@pytest.fixture
async def submitter(running: Running) -> AsyncIterator[aiohttp.ClientSession]:
    async with running.http.post(
        f"{running.url}/keys", json={"name": "alice", "scope": "submit"}
    ) as response:
        assert response.status == 201
        secret = (await response.json())["data"]["api_key"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as session:
        yield session


async def test_an_owner_less_job_is_an_admins_only(
    running: Running, submitter: aiohttp.ClientSession
) -> None:
    # queued (no fleet to run on): enough to be listed, read and cancelled
    service = context_of(running).jobs
    assert service is not None
    orphan = await service.submit({"config": {"command": sleeper(0)}}, None)
    async with submitter.post(
        f"{running.url}/jobs/submit", json={"config": {"command": sleeper(0)}}
    ) as response:
        assert response.status == 201
        own = (await response.json())["job_id"]
    url = running.url

    async with submitter.get(f"{url}/jobs") as response:
        assert [j["job_id"] for j in await response.json()] == [own]
    async with submitter.get(f"{url}/dashboard/jobs") as response:
        assert [j["job_id"] for j in (await response.json())["jobs"]] == [own]
    for method, path in [
        ("GET", f"/jobs/{orphan.job_id}"),
        ("GET", f"/jobs/{orphan.job_id}/statuses"),
        ("POST", f"/jobs/{orphan.job_id}/cancel"),
        ("DELETE", f"/jobs/{orphan.job_id}"),
    ]:
        async with submitter.request(method, f"{url}{path}") as response:
            assert response.status == 404, (method, path)

    async with running.http.get(f"{url}/jobs") as response:  # the admin sees both
        assert {j["job_id"] for j in await response.json()} == {own, orphan.job_id}
    async with running.http.post(f"{url}/jobs/{orphan.job_id}/cancel") as response:
        assert response.status == 200


async def owner_less_hold(running: Running, fleet: list[dict[str, Any]]) -> Hold:
    """A hold made by the server (no key), on one GPU of the demo fleet."""
    holds = context_of(running).holds
    node = fleet[0]["nodes"]["nodeData"][0]["id"]
    hold = holds.reserve(
        (Placement(fleet[0]["id"], node, ("0",)),),
        lease_seconds=600,
        owner=None,
        request_id=None,
        policy_uri="binpack:1.0-stable",
    )
    await holds.commit(hold)
    return hold


async def test_an_owner_less_hold_is_seen_by_admins_only(
    running: Running, fleet: list[dict[str, Any]], submitter: aiohttp.ClientSession
) -> None:
    hold = await owner_less_hold(running, fleet)
    async with submitter.get(f"{running.url}/allocations") as response:
        assert (await response.json())["data"] == []
    async with submitter.get(f"{running.url}/allocations/{hold.allocation_id}") as response:
        assert response.status == 404
    async with running.http.get(f"{running.url}/allocations") as response:
        assert [h["allocation_id"] for h in (await response.json())["data"]] == [hold.allocation_id]


async def test_only_an_admin_may_release_or_renew_an_owner_less_hold(
    running: Running, fleet: list[dict[str, Any]], submitter: aiohttp.ClientSession
) -> None:
    # before, any submit key could release it (the hold manager let owner-less holds go)
    hold = await owner_less_hold(running, fleet)
    holds = context_of(running).holds
    async with submitter.delete(f"{running.url}/allocations/{hold.allocation_id}") as response:
        body = await response.json()
        assert response.status == 404, body  # as for an unknown id: REST is no oracle
    assert body["error"]["code"] == "UnknownAllocation"
    with pytest.raises(Forbidden):
        await holds.renew(hold.allocation_id, 60, owner="some-key", is_admin=False)
    with pytest.raises(Forbidden):
        await holds.release(hold.allocation_id, owner="some-key", is_admin=False)
    assert [h.allocation_id for h in holds.active()] == [hold.allocation_id]
    async with running.http.delete(f"{running.url}/allocations/{hold.allocation_id}") as response:
        assert response.status == 200
    assert holds.active() == []
