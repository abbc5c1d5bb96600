"""Events across servers (issue 11, item 4): servers sharing one PostgreSQL database fan their
Socket.IO events out through Redis (python-socketio's Redis manager), one sequence for all:
a client connected to one server receives, in ``seq`` order, the events of work done through
the others, and resumes with ``since`` from the shared log. Three server processes, a real
PostgreSQL, a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from typer.testing import CliRunner

from apportion.cli.app import app
from tests import builders
from tests.conftest import ADMIN_KEY, Running, allocation, ask
from tests.replica_servers import server_processes

WAIT = 20.0


@pytest.fixture
async def replicas(
    tmp_path: Path, postgres_db: str, redis_url: str
) -> AsyncIterator[list[Running]]:
    """Three servers, each a process of its own, on one PostgreSQL database and one Redis."""
    async with server_processes(tmp_path, postgres_db, 3, redis_url=redis_url) as started:
        servers = [s.running for s in started]
        doc = builders.make_cluster("c1", nodes=8, gpus=8)
        async with servers[0].http.post(f"{servers[0].url}/clusters", json=doc) as response:
            assert response.status == 201, await response.text()
        yield servers


async def hold_one(server: Running) -> dict[str, Any]:
    """A hold of one GPU; raced by the other servers, it may be answered Conflict (retry)."""
    async with server.ws() as ws:
        answer = await ask(ws, allocation(adhoc=False, lease_seconds=600, inputs={"gpus": 1}))
    assert answer["success"] or answer["error"]["code"] == "Conflict", answer
    return answer


async def test_a_client_of_one_server_gets_every_servers_events_in_seq_order(
    replicas: list[Running],
) -> None:
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)

    async def any_event(_name: str, data: Any) -> None:
        received.append(data)
        arrived.set()

    client.on("*", any_event)
    await client.connect(
        replicas[2].url, auth={"token": ADMIN_KEY}, transports=["websocket"], wait_timeout=WAIT
    )
    try:
        # holds through all three at once: each is an allocation_decided event of its server
        answers = await asyncio.gather(*(hold_one(replicas[i % 3]) for i in range(60)))
        made = [a for a in answers if a["success"]]
        assert made

        async def every_hold_heard() -> None:
            while len([e for e in received if e["type"] == "allocation_decided"]) < len(made):
                arrived.clear()
                await arrived.wait()

        await asyncio.wait_for(every_hold_heard(), WAIT)
    finally:
        await client.disconnect()
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs  # in order, none twice
    decided = {e["allocation_id"] for e in received if e["type"] == "allocation_decided"}
    assert decided == {m["allocation_id"] for m in made}
    # no gap: what the client got is the shared log from its first event on
    since = seqs[0] - 1
    async with replicas[0].http.get(f"{replicas[0].url}/events?since={since}") as response:
        logged = [e["seq"] for e in (await response.json())["data"]]
    assert logged[: len(seqs)] == seqs


def test_redis_needs_a_shared_postgresql_database(tmp_path: Path) -> None:
    env = {
        "APPORTION_DATA_DIR": str(tmp_path / "d"),
        "APPORTION_CREDENTIALS": str(tmp_path / "c"),
        "APPORTION_REDIS_URL": "redis://127.0.0.1:6390/0",
    }
    result = CliRunner().invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert "redis_url fans events out to the other servers of one PostgreSQL database" in (
        result.stderr
    )
    env["APPORTION_REDIS_URL"] = "http://127.0.0.1:6390"
    env["APPORTION_DB"] = "postgresql://u@127.0.0.1:5440/d"
    result = CliRunner().invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert "invalid option redis_url: use redis://" in result.stderr
