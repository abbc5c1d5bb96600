"""When PostgreSQL goes away (issue 11, item 7): a server refuses what needs the database with
a clear, retryable ``Unavailable`` (503), keeps answering what it can from memory, and recovers
by itself when the database is back. The database is a real PostgreSQL of the test's own
(``private_postgres``), stopped and started again mid-test."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests import builders
from tests.conftest import Running, allocation, ask, running_server
from tests.jobs_helpers import wait_for
from tests.postgres_env import PrivatePostgres


async def hold(server: Running, lease_seconds: float = 600) -> dict[str, Any]:
    async with server.ws() as ws:
        return await ask(
            ws, allocation(adhoc=False, lease_seconds=lease_seconds, inputs={"gpus": 1})
        )


async def held(server: Running) -> list[str]:
    async with server.http.get(f"{server.url}/allocations") as response:
        assert response.status == 200
        return [h["allocation_id"] for h in (await response.json())["data"]]


async def submit(server: Running) -> tuple[int, dict[str, Any]]:
    body = {"config": {"name": "after", "command": ["/bin/true"]}}
    async with server.http.post(f"{server.url}/jobs/submit", json=body) as response:
        return response.status, await response.json()


async def test_without_its_database_a_server_refuses_changes_retryably_reads_on_and_recovers(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    async with running_server(tmp_path / "data", db=private_postgres.url) as server:
        doc = builders.make_cluster("c1", nodes=1, gpus=4)
        async with server.http.post(f"{server.url}/clusters", json=doc) as response:
            assert response.status == 201, await response.text()
        first = await hold(server)
        assert first["success"], first
        short = await hold(server, lease_seconds=0.5)  # its lease ends while the database is away
        assert short["success"], short

        private_postgres.stop()
        await asyncio.sleep(1.5)  # the lease loop has tried to record the end, and failed

        refused = await hold(server)
        assert not refused["success"]
        assert refused["error"]["code"] == "Unavailable", refused
        assert "retry in a few seconds" in refused["message"]
        status, answer = await submit(server)
        assert status == 503 and answer["error"]["code"] == "Unavailable", answer
        # what is in memory is still answered: the holds, the registry, adhoc decisions
        assert await held(server) == [first["allocation_id"]]
        async with server.ws() as ws:
            adhoc = await ask(ws, allocation(inputs={"gpus": 1}))
        assert adhoc["success"], adhoc
        async with server.http.get(f"{server.url}/clusters/c1") as response:
            assert response.status == 200

        private_postgres.start()

        again: dict[str, Any] = {}
        for _ in range(300):  # the pool reconnects by itself, at the next change
            again = await hold(server)
            if again["success"]:
                break
            assert again["error"]["code"] == "Unavailable", again
            await asyncio.sleep(0.05)
        assert again["success"], again
        # leases still end: the lease loop outlived the outage
        brief = await hold(server, lease_seconds=0.5)
        assert brief["success"], brief
        for _ in range(100):
            if brief["allocation_id"] not in await held(server):
                break
            await asyncio.sleep(0.05)
        assert brief["allocation_id"] not in await held(server)
        # the jobs run again once the server leads again: after the grace a leader that lost
        # its connection gives what it had begun (jobs/duty.py), 503 retryable until then
        for _ in range(200):
            status, answer = await submit(server)
            if status != 503:
                break
            assert answer["error"]["details"]["retryable"], answer
            await asyncio.sleep(0.05)
        assert status == 201, answer
        done = await wait_for(server, answer["job_id"], "completed", "failed")
        assert done["status"] == "completed", done
        async with server.http.get(f"{server.url}/jobs") as response:
            listed = await response.json()
        # the refused submit left nothing behind: one job, the one accepted
        assert [j["job_id"] for j in listed] == [answer["job_id"]], listed
