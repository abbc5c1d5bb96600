"""One leader among the servers sharing a PostgreSQL database (issue 11, item 3, first part):
the lead is a session advisory lock, the leader ends the leases, and when it is SIGKILLed
another server takes over within seconds. Server processes of their own, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from tests import builders
from tests.conftest import Running, allocation, ask
from tests.replica_servers import server_processes

TAKEOVER_BOUND = 10.0  # seconds; measured (benchmarks/replicas.py) well under it


async def role(server: Running) -> str:
    async with server.http.get(f"{server.url}/system/status") as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["role"])


async def hold(server: Running, lease_seconds: float) -> dict[str, Any]:
    async with server.ws() as ws:
        answer = await ask(
            ws, allocation(adhoc=False, lease_seconds=lease_seconds, inputs={"gpus": 1})
        )
    assert answer["success"], answer
    return answer


async def held(server: Running) -> set[str]:
    async with server.http.get(f"{server.url}/allocations") as response:
        return {h["allocation_id"] for h in (await response.json())["data"]}


async def released(server: Running, allocation_id: str) -> int:
    """How many ``allocation_released`` events the shared log has for ``allocation_id``."""
    url = f"{server.url}/events?since=0&type=allocation_released"
    async with server.http.get(url) as response:
        assert response.status == 200, await response.text()
        page = (await response.json())["data"]
    return sum(1 for e in page if e["allocation_id"] == allocation_id)


async def until_gone(server: Running, allocation_id: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if allocation_id not in await held(server):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{allocation_id} still held after {seconds} s")


async def test_one_server_leads_and_another_takes_over_when_it_is_killed(
    tmp_path: Path, postgres_db: str
) -> None:
    async with server_processes(tmp_path, postgres_db, 3) as servers:
        doc = builders.make_cluster("c1", nodes=1, gpus=8)
        async with servers[0].running.http.post(
            f"{servers[0].running.url}/clusters", json=doc
        ) as response:
            assert response.status == 201, await response.text()
        roles = [await role(s.running) for s in servers]
        assert sorted(roles) == ["follower", "follower", "leader"], roles
        leader = servers[roles.index("leader")]
        others = [s for s in servers if s is not leader]

        # a lease of a hold made through a follower is ended (by the leader) and heard by all
        brief = await hold(others[0].running, lease_seconds=0.5)
        for server in servers:
            await until_gone(server.running, brief["allocation_id"])
        await asyncio.sleep(1.0)  # a follower that ended it too would have said so by now
        assert await released(others[1].running, brief["allocation_id"]) == 1

        leader.process.send_signal(signal.SIGKILL)
        await leader.process.wait()
        killed_at = time.monotonic()
        new_roles: list[str] = []
        for _ in range(int(TAKEOVER_BOUND / 0.05)):
            new_roles = [await role(s.running) for s in others]
            if "leader" in new_roles:
                break
            await asyncio.sleep(0.05)
        takeover = time.monotonic() - killed_at
        assert sorted(new_roles) == ["follower", "leader"], (new_roles, takeover)

        # the new leader ends leases, for holds made through either survivor
        for server in others:
            again = await hold(server.running, lease_seconds=0.5)
            for survivor in others:
                await until_gone(survivor.running, again["allocation_id"])
