"""The Python client against a real server on 127.0.0.1:0: allocation over the WebSocket (many
in flight, holds, reconnect), jobs (submit, wait, logs follow), events (resume after a drop),
typed errors carrying the server's codes, the sync façade and configuration resolution."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from apportion.clients import (
    Apportion,
    AsyncApportion,
    ForbiddenError,
    InvalidRequestError,
    NoFeasiblePlacementError,
    NotFoundError,
    ServerUnreachableError,
    UnauthorizedError,
    WaitTimeoutError,
    resolve_config,
)
from apportion.jobs.identity import python_for_jobs
from tests.conftest import ADMIN_KEY, Running

PY = python_for_jobs()  # an interpreter the job user can run (docs/security.md)


def client_for(running: Running, key: str | None = ADMIN_KEY) -> AsyncApportion:
    return AsyncApportion(running.url, ws_url=running.ws_url, api_key=key)


def nodes_of(fleet: list[dict[str, Any]]) -> dict[str, set[str]]:
    return {c["id"]: {n["id"] for n in c["nodes"]["nodeData"]} for c in fleet}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_allocate_returns_a_placement_inside_the_fleet(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with client_for(running) as client:
        result = await client.allocate({"gpus": 2}, explain=True)
    placement = result.placement
    assert placement.node_id in nodes_of(fleet)[placement.cluster_id]
    assert len(placement.gpus) == 2 and len(set(placement.gpus)) == 2
    assert result.allocation_id is None  # adhoc: nothing held
    assert result.explain is not None and result.explain["policy_rule_uri"] == "binpack:1.0-stable"


async def test_many_requests_in_flight_share_one_connection(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with client_for(running) as client:
        results = await asyncio.gather(*(client.allocate({"gpus": 1 + i % 4}) for i in range(40)))
        assert client._socket.connects == 1
    # request i asked for 1 + i % 4 GPUs; each answer matches its own request
    assert [len(r.placement.gpus) for r in results] == [1 + i % 4 for i in range(40)]
    assert len({r.request_id for r in results}) == 40


async def test_hold_context_manager_releases_on_exit_and_on_error(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with client_for(running) as client:
        async with client.hold({"gpus": 4}, lease_seconds=30) as hold:
            held = {a["allocation_id"] for a in await client.allocations()}
            assert hold.allocation_id in held
            before = hold.result.expires_at
            assert before is not None and await hold.renew(60) > before - 1
        assert hold.allocation_id not in {a["allocation_id"] for a in await client.allocations()}
        with pytest.raises(RuntimeError):
            async with client.hold({"gpus": 1}) as second:
                raise RuntimeError("boom")
        assert await client.allocations() == []
        with pytest.raises(NotFoundError) as gone:
            await client.release(second.allocation_id)
        assert gone.value.code == "UnknownAllocation"


async def test_allocation_socket_reconnects_after_a_drop(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with client_for(running) as client:
        await client.allocate({"gpus": 1})
        await client._socket.drop()
        again = await client.allocate({"gpus": 1})
        assert again.placement.cluster_id in nodes_of(fleet)
        assert client._socket.connects == 2


async def test_typed_errors_carry_the_server_codes(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with client_for(running) as client:
        with pytest.raises(NoFeasiblePlacementError) as none_fit:
            await client.allocate({"gpus": 1000})
        assert none_fit.value.code == "NoFeasiblePlacement"
        with pytest.raises(NotFoundError) as missing:
            await client.job("no-such-job")
        assert (missing.value.code, missing.value.status) == ("NotFound", 404)
        with pytest.raises(InvalidRequestError) as bad:
            await client.allocate({"gpus": 1}, clusters=["nowhere"])
        assert bad.value.details.get("path", "").startswith("clusters")
        with pytest.raises(NotFoundError) as unknown_policy:
            await client.allocate({"gpus": 1}, policy="nope:1.0-stable")
        assert unknown_policy.value.code == "UnknownPolicy"
        read_key = (await client.create_key("reader", "read"))["api_key"]
    async with client_for(running, read_key) as reader:
        assert len(await reader.clusters()) == len(fleet)
        with pytest.raises(ForbiddenError) as forbidden:
            await reader.submit([PY, "-c", "pass"])
        assert forbidden.value.details["needed"] == "submit"
    async with client_for(running, "wrong-key-0123456789") as stranger:
        with pytest.raises(UnauthorizedError) as rest_denied:
            await stranger.clusters()
        assert rest_denied.value.status == 401
        with pytest.raises(UnauthorizedError):
            await stranger.allocate({"gpus": 1})


async def test_unreachable_server_names_the_url() -> None:
    port = free_port()
    client = AsyncApportion(
        f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}", api_key="k"
    )
    client._socket._retries = 1
    try:
        with pytest.raises(ServerUnreachableError) as rest:
            await client.clusters()
        assert f"127.0.0.1:{port}" in rest.value.message
        with pytest.raises(ServerUnreachableError) as ws:
            await client.allocate({"gpus": 1})
        assert f"ws://127.0.0.1:{port}" in ws.value.message
    finally:
        await client.close()


async def test_submit_wait_statuses_and_logs(running: Running, fleet: list[dict[str, Any]]) -> None:
    async with client_for(running) as client:
        job_id = await client.submit(
            [PY, "-c", "import os; print('hello', os.environ['GREETING'])"],
            gpus=1,
            name="hello",
            env={"GREETING": "world"},
        )
        job = await client.wait(job_id, timeout=30)
        assert (job.status, job.return_code, job.name) == ("completed", 0, "hello")
        history = [entry.status for entry in await client.statuses(job_id)]
        assert history[0] == "queued" and history[-1] == "completed"
        text = "".join([chunk async for chunk in client.logs(job_id)])
        assert "hello world" in text
        explained = await client.explain(job_id)
        assert explained["waiting"] is False and explained["allocation"]
        listed = [j.job_id async for j in client.jobs(page_size=1)]
        assert job_id in listed


async def test_wait_times_out_and_cancel_ends_the_job(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with client_for(running) as client:
        job_id = await client.submit([PY, "-c", "import time; time.sleep(60)"])
        with pytest.raises(WaitTimeoutError):
            await client.wait(job_id, timeout=0.3)
        await client.cancel(job_id)
        assert (await client.wait(job_id, timeout=30)).status == "cancelled"


async def test_logs_follow_reads_until_the_job_ends(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    script = (
        "import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.2)"
    )
    async with client_for(running) as client:
        job_id = await client.submit([PY, "-c", script])
        chunks = [chunk async for chunk in client.logs(job_id, follow=True)]
        # 5 lines, 0.2 s apart: followed as they come, then the stream ends with the job
        assert "".join(chunks).splitlines() == [f"line {i}" for i in range(5)]
        # the log is complete once the process has exited; the record follows shortly
        assert (await client.wait(job_id, timeout=30)).status == "completed"


async def test_events_resume_after_a_dropped_connection(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    doc = {**fleet[0]}
    async with client_for(running) as client:
        stream = client.events(types={"cluster_updated"}, backoff=1.0)
        first_task = asyncio.ensure_future(stream.__anext__())
        for _ in range(1500):  # until the stream has connected and subscribed (30 s at least)
            if stream.connects:
                break
            await asyncio.sleep(0.02)
        await client.register_cluster({**doc, "id": "extra-1"})
        first = await asyncio.wait_for(first_task, 30)
        await stream.drop()  # reconnects after 1 s; the next event happens while it is away
        await client.register_cluster({**doc, "id": "extra-2"})
        second = await asyncio.wait_for(stream.__anext__(), 30)
        await stream.aclose()
    assert stream.connects == 2
    assert second.seq > first.seq
    assert [first.payload.get("cluster_id"), second.payload.get("cluster_id")] == [
        "extra-1",
        "extra-2",
    ]


async def test_events_since_replays_history(running: Running, fleet: list[dict[str, Any]]) -> None:
    async with client_for(running) as client:
        history = [e async for e in client.event_history(0, types={"cluster_updated"})]
        assert len(history) == len(fleet)  # one cluster_updated per registered cluster
        async with client.events(since=0, types={"cluster_updated"}) as stream:
            replayed = [await asyncio.wait_for(stream.__anext__(), 30) for _ in fleet]
    assert [e.seq for e in replayed] == [e.seq for e in history]


async def test_sync_client_from_threads(running: Running, fleet: list[dict[str, Any]]) -> None:
    def work() -> tuple[list[int], str, str]:
        with Apportion(running.url, ws_url=running.ws_url, api_key=ADMIN_KEY) as client:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(8) as pool:
                sizes = list(
                    pool.map(
                        lambda n: len(client.allocate({"gpus": n}).placement.gpus), [1, 2, 3, 4] * 4
                    )
                )
            with client.hold({"gpus": 2}) as hold:
                held = hold.allocation_id
                assert held in {a["allocation_id"] for a in client.allocations()}
            assert client.allocations() == []
            job_id = client.submit([PY, "-c", "print('sync')"])
            status = client.wait(job_id, timeout=30).status
            text = "".join(client.logs(job_id))
        return sizes, status, text

    sizes, status, text = await asyncio.to_thread(work)
    assert sizes == [1, 2, 3, 4] * 4
    assert status == "completed" and "sync" in text


@pytest.mark.parametrize(
    ("given", "env", "profile_url", "expected", "source"),
    [
        # argument beats environment and profile
        ("http://a:1", {"APPORTION_URL": "http://e:2"}, "http://p:3", "http://a:1", "argument"),
        # environment beats profile
        (None, {"APPORTION_URL": "http://e:2"}, "http://p:3", "http://e:2", "environment"),
        # profile beats the default
        (None, {}, "http://p:3", "http://p:3", "profile default"),
        # nothing given: the default
        (None, {}, None, "http://127.0.0.1:8080", "default"),
    ],
)
def test_config_resolution_order(
    tmp_path: Path,
    given: str | None,
    env: dict[str, str],
    profile_url: str | None,
    expected: str,
    source: str,
) -> None:
    credentials = tmp_path / "credentials"
    if profile_url:
        credentials.write_text(f"[default]\nurl = {profile_url}\napi_key = pkey\n")
    config = resolve_config(url=given, environ=env, credentials_path=credentials)
    assert (config.url, config.sources["url"]) == (expected, source)
    # the WebSocket URL follows the HTTP host when given nowhere: port 8765
    host = expected.split("://")[1].split(":")[0]
    assert config.ws_url == f"ws://{host}:8765"
    assert config.api_key == ("pkey" if profile_url else None)


def test_config_rejects_a_bad_url(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as bad:
        resolve_config(url="127.0.0.1:8080", environ={}, credentials_path=tmp_path / "none")
    assert "http://" in bad.value.message
