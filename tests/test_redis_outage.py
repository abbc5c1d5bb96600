"""When Redis goes away (issue 11, item 7): servers sharing a PostgreSQL database keep
answering — holds are made and their events stored and sent to each server's own Socket.IO
clients — the other servers' clients catch up from the shared log with ``since``, and once
Redis is back every event reaches every server's clients again, without a restart. Two server
processes, a real PostgreSQL, a Redis of the test's own that it stops and starts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import socketio

from tests import builders
from tests.conftest import ADMIN_KEY, Running, allocation, ask
from tests.redis_env import PrivateRedis
from tests.replica_servers import server_processes

WAIT = 60.0  # a deadline for a broken test (the manager retries Redis after 1, 2, 4… s)


async def hold(server: Running) -> str:
    async with server.ws() as ws:
        answer = await ask(ws, allocation(adhoc=False, lease_seconds=600, inputs={"gpus": 1}))
    assert answer["success"], answer
    return str(answer["allocation_id"])


async def test_without_redis_servers_answer_and_send_their_own_events_then_recover(
    tmp_path: Path, postgres_db: str, private_redis: PrivateRedis
) -> None:
    async with server_processes(tmp_path, postgres_db, 2, redis_url=private_redis.url) as pair:
        first, second = (s.running for s in pair)
        doc = builders.make_cluster("c1", nodes=4, gpus=8)
        async with first.http.post(f"{first.url}/clusters", json=doc) as response:
            assert response.status == 201, await response.text()
        heard: list[dict[str, Any]] = []
        arrived = asyncio.Event()
        client = socketio.AsyncClient(reconnection=False)

        async def any_event(_name: str, data: Any) -> None:
            heard.append(data)
            arrived.set()

        client.on("*", any_event)
        await client.connect(
            second.url, auth={"token": ADMIN_KEY}, transports=["websocket"], wait_timeout=20
        )
        try:

            async def until_heard(allocation_id: str) -> None:
                while allocation_id not in {e.get("allocation_id") for e in heard}:
                    arrived.clear()
                    await arrived.wait()

            before = await hold(first)  # through Redis, as usual
            await asyncio.wait_for(until_heard(before), WAIT)

            private_redis.stop()
            during_first = await hold(first)  # answered: holds need no Redis
            during_second = await hold(second)
            await asyncio.wait_for(until_heard(during_second), WAIT)  # its own clients hear it
            # the first's event reached no other server's client, and is in the shared log
            assert during_first not in {e.get("allocation_id") for e in heard}
            since = max(e["seq"] for e in heard if e.get("allocation_id") == before)
            async with second.http.get(f"{second.url}/events?since={since}") as response:
                logged = {e.get("allocation_id") for e in (await response.json())["data"]}
            assert {during_first, during_second} <= logged

            private_redis.start()  # same port and password: the servers reconnect by themselves

            async def until_the_first_is_heard_again() -> None:
                while True:
                    after = await hold(first)
                    try:
                        await asyncio.wait_for(until_heard(after), 1.0)
                        return
                    except TimeoutError:
                        continue  # the manager's next try has not come yet

            await asyncio.wait_for(until_the_first_is_heard_again(), WAIT)
        finally:
            await client.disconnect()
