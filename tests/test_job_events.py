"""Seed 001's events over Socket.IO, in the order of a job's life, with their payload keys (CONTRACTS §7)."""

from __future__ import annotations

import asyncio
from typing import Any

import socketio

from tests.conftest import ADMIN_KEY, Running
from tests.jobs_helpers import sleeper, submit, wait_for

JOB_EVENTS = ("job_queued", "job_scheduled", "job_started", "job_completed")
KEYS = {
    "job_queued": {"job_id", "priority", "queue_position"},
    "job_scheduled": {"job_id", "scheduler_job_id", "allocation"},
    "job_started": {"job_id", "start_time", "resources"},
    "job_completed": {"job_id", "status", "end_time", "return_code"},
    "limits_updated": {"old_limits", "new_limits"},
}


async def listen(running: Running, seen: list[dict[str, Any]]) -> socketio.AsyncClient:
    client = socketio.AsyncClient()
    for name in (*JOB_EVENTS, "limits_updated"):
        client.on(name, lambda data, name=name: seen.append({"event": name, **data}))
    await client.connect(running.url, auth={"token": ADMIN_KEY}, transports=["websocket"])
    return client


async def test_job_events_in_order_with_payload_keys(running: Running, fleet: Any) -> None:
    seen: list[dict[str, Any]] = []
    client = await listen(running, seen)
    try:
        async with running.http.put(
            f"{running.url}/pool/limits", json={"max_concurrent_jobs": 3}
        ) as r:
            assert r.status == 200
        job_id = await submit(
            running, {"command": sleeper(0.2), "resources": {"gpus": 1}}, priority=2
        )
        await wait_for(running, job_id, "completed")
        for _ in range(100):
            if any(e["event"] == "job_completed" for e in seen):
                break
            await asyncio.sleep(0.05)
    finally:
        await client.disconnect()
    mine = [e for e in seen if e.get("job_id") == job_id]
    assert [e["event"] for e in mine] == list(JOB_EVENTS)
    for event in mine + [e for e in seen if e["event"] == "limits_updated"]:
        assert KEYS[event["event"]] <= set(event), event
        assert isinstance(event["seq"], int) and event["ts"]
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs)
    assert (
        mine[0]["priority"] == 2
        and mine[-1]["status"] == "completed"
        and mine[-1]["return_code"] == 0
    )
    limits = next(e for e in seen if e["event"] == "limits_updated")
    assert limits["new_limits"]["max_concurrent_jobs"] == 3


async def test_missed_events_are_served_by_get_events(running: Running, fleet: Any) -> None:
    async with running.http.get(f"{running.url}/events", params={"since": "0"}) as r:
        before = (await r.json())["latest_seq"]
    job_id = await submit(running, {"command": sleeper(0)})
    await wait_for(running, job_id, "completed")
    for _ in range(100):
        async with running.http.get(f"{running.url}/events", params={"since": str(before)}) as r:
            events = (await r.json())["data"]
        if any(e["type"] == "job_completed" for e in events):
            break
        await asyncio.sleep(0.05)
    types = [e["type"] for e in events if e.get("job_id") == job_id]
    assert types == list(JOB_EVENTS)
    assert all(e["seq"] > before for e in events)


async def test_socketio_refuses_a_wrong_token(running: Running) -> None:
    client = socketio.AsyncClient()
    refusals: list[Any] = []
    client.on("connect_error", refusals.append)
    try:
        await client.connect(
            running.url, auth={"token": "wrong-token-wrong-token"}, transports=["websocket"]
        )
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await client.disconnect()
        raise AssertionError("a wrong token was accepted")
    assert refusals and "Unauthorized" in refusals[0]["message"]


async def test_metrics_count_allocations_admissions_and_gpus(running: Running, fleet: Any) -> None:
    async with running.ws() as ws:
        from tests.conftest import allocation, ask

        held = await ask(ws, allocation(adhoc=False, inputs={"gpus": 2}))
        assert held["success"]
        assert (await ask(ws, allocation(inputs={"gpus": 99})))["success"] is False
    job_id = await submit(running, {"command": sleeper(0)})
    await wait_for(running, job_id, "completed")
    async with running.http.get(f"{running.url}/metrics") as r:
        text = await r.text()
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert lines['apportion_allocations_total{outcome="success",policy="binpack:1.0-stable"}'] == 1
    assert (
        lines[
            'apportion_allocations_total{outcome="NoFeasiblePlacement",policy="binpack:1.0-stable"}'
        ]
        == 1
    )
    assert lines['apportion_admissions_total{queue="default"}'] == 1
    assert lines['apportion_dispatches_total{adapter="local",outcome="success"}'] == 1
    # 352 GPUs in the demo fleet; the hold keeps 2 of them
    assert (
        lines['apportion_gpus{state="total"}'] == 352 and lines['apportion_gpus{state="held"}'] == 2
    )
    assert lines['apportion_queue_depth{queue="default"}'] == 0
    async with running.http.get(
        f"{running.url}/events", params={"since": "0", "type": "allocation_decided"}
    ) as r:
        decided = (await r.json())["data"]
    assert [e["allocation_id"] for e in decided] == [held["allocation_id"]]
