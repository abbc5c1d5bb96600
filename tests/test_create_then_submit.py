"""Jobs created, then submitted (issue 12: seed 003's create ≠ submit; Slurm's ``sbatch --hold``
and ``scontrol release``): a created job is stored with the submit's checks but never admitted
until it is submitted; it is submitted once, by its user, and may be cancelled before — over
REST, from the Python client and from the command line, on a real server with the real local
adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from apportion.clients import AsyncApportion, ConflictError
from tests.cli_helpers import cli, ok
from tests.conftest import ADMIN_KEY, Running
from tests.jobs_helpers import PY, exiting, statuses, submit, wait_for


async def create(running: Running, config: dict[str, Any], http: Any = None) -> Any:
    body = {"config": config}
    async with (http or running.http).post(f"{running.url}/jobs", json=body) as response:
        return response.status, await response.json()


async def test_a_created_job_waits_until_it_is_submitted(running: Running, fleet: Any) -> None:
    status, created = await create(running, {"command": exiting(0), "name": "later"})
    assert status == 201, created
    assert created["status"] == "created" and created["queue_position"] is None
    job_id = created["job_id"]
    # a job submitted after it runs to its end: cycles went by, and the created one stayed
    other = await submit(running, {"command": exiting(0)})
    await wait_for(running, other, "completed")
    async with running.http.get(f"{running.url}/jobs/{job_id}") as response:
        assert (await response.json())["status"] == "created"
    async with running.http.get(f"{running.url}/events?type=job_queued") as response:
        queued = {e["job_id"] for e in (await response.json())["data"]}
    assert other in queued and job_id not in queued
    async with running.http.post(f"{running.url}/jobs/{job_id}/submit") as response:
        submitted = await response.json()
        assert response.status == 200 and submitted["status"] == "queued"
    await wait_for(running, job_id, "completed")
    assert await statuses(running, job_id) == [
        "created", "queued", "scheduled", "running", "completed"
    ]  # fmt: skip
    async with running.http.post(f"{running.url}/jobs/{job_id}/submit") as response:
        answer = await response.json()
        assert response.status == 409 and "only a created job" in answer["message"]


async def test_a_created_job_is_checked_like_a_submit_and_may_be_cancelled(
    running: Running, fleet: Any
) -> None:
    status, refused = await create(running, {"command": exiting(0), "queue": "nowhere"})
    assert status == 400 and refused["error"]["details"]["path"] == "body.config.queue"
    _, created = await create(running, {"command": exiting(0)})
    job_id = created["job_id"]
    async with running.http.post(f"{running.url}/jobs/{job_id}/cancel") as response:
        assert response.status == 200
    async with running.http.get(f"{running.url}/jobs/{job_id}/statuses") as response:
        history = await response.json()
    assert [(h["status"], h["reason"]) for h in history][-1] == (
        "cancelled",
        "cancelled while created",
    )


@asynccontextmanager
async def outsider(running: Running) -> AsyncIterator[aiohttp.ClientSession]:
    """A session with the key of a user of another account."""
    async with running.http.post(f"{running.url}/accounts", json={"name": "elsewhere"}) as r:
        assert r.status == 201
    body = {"name": "eve", "account": "elsewhere"}
    async with running.http.post(f"{running.url}/keys", json=body) as response:
        key = (await response.json())["data"]["api_key"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        yield session


async def test_only_its_user_submits_it(running: Running, fleet: Any) -> None:
    async with running.http.post(f"{running.url}/accounts", json={"name": "team"}) as response:
        assert response.status == 201
    keys = {}
    for user in ("alice", "bob"):
        body = {"name": user, "account": "team", "user": user}
        async with running.http.post(f"{running.url}/keys", json=body) as response:
            keys[user] = (await response.json())["data"]["api_key"]
    sessions = {
        user: aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        for user, key in keys.items()
    }
    async with sessions["alice"] as alice, sessions["bob"] as bob:
        _, created = await create(running, {"command": [PY, "-c", "pass"]}, http=alice)
        url = f"{running.url}/jobs/{created['job_id']}/submit"
        async with bob.post(url) as response:
            assert response.status == 403
        async with outsider(running) as other, other.post(url) as response:
            assert response.status == 404  # another account: as an unknown id
        async with alice.post(url) as response:
            assert response.status == 200


async def test_the_client_and_the_command_line_hold_and_enqueue(
    running: Running, fleet: Any
) -> None:
    async with AsyncApportion(running.url, api_key=ADMIN_KEY) as client:
        held = await client.create_job(exiting(0), name="held")
        assert held.status == "created"
        queued = await client.submit_created(held.job_id)
        assert queued.status == "queued"
        with pytest.raises(ConflictError, match="only a created job"):
            await client.submit_created(held.job_id)
    said = ok(await cli(running, "submit", "--hold", "--name", "cli-held", "--", *exiting(0)))
    job_id = said.split("Created job ")[1].split()[0]
    listing = ok(await cli(running, "jobs"))
    assert "created" in listing and "apportion enqueue" in listing
    assert ok(await cli(running, "enqueue", job_id)).strip() == f"Queued job {job_id}"
    await wait_for(running, job_id, "completed")
    both = await cli(running, "submit", "--hold", "--wait", "--", *exiting(0))
    assert both.exit_code == 2 and "--hold and --wait" in both.stderr


async def test_a_created_job_is_changed_until_it_is_submitted(running: Running, fleet: Any) -> None:
    _, created = await create(running, {"command": exiting(3), "name": "draft"})
    url = f"{running.url}/jobs/{created['job_id']}"
    revised = {"config": {"command": exiting(0), "name": "final"}, "priority": 4}
    async with running.http.patch(url, json=revised) as response:
        record = await response.json()
        assert response.status == 200, record
    assert (record["name"], record["priority"], record["status"]) == ("final", 4, "created")
    bad = {"config": {"command": exiting(0), "queue": "nowhere"}}
    async with running.http.patch(url, json=bad) as response:
        answer = await response.json()
        assert response.status == 400 and answer["error"]["details"]["path"] == "body.config.queue"
    async with running.http.post(f"{url}/submit") as response:
        assert response.status == 200
    done = await wait_for(running, created["job_id"], "completed", "failed")
    assert done["status"] == "completed"  # the revised command ran (exit 0, not 3)
    async with running.http.patch(url, json=revised) as response:
        answer = await response.json()
        assert response.status == 409 and "only a created job" in answer["message"]
