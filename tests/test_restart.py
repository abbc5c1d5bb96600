"""What was acknowledged survives a restart of the server (and a SIGKILL of it)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from apportion.app import Server
from apportion.store.data_dir import DataDirInUse
from tests.conftest import ADMIN_KEY, allocation, ask, running_server, server_settings

PIN = {"variable": "id", "operator": "==", "value": "mixed-lab-n00"}


async def test_hold_survives_a_clean_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        await live.load_demo_fleet()
        async with live.ws() as ws:
            held = await ask(
                ws,
                allocation(
                    adhoc=False,
                    lease_seconds=300,
                    clusters=["mixed-lab"],
                    inputs={"gpus": 8, "node_filter": PIN},
                ),
            )
        assert held["success"], held
    async with running_server(data) as live, live.ws() as ws:
        blocked = await ask(
            ws, allocation(clusters=["mixed-lab"], inputs={"gpus": 1, "node_filter": PIN})
        )
        assert blocked["error"]["code"] == "NoFeasiblePlacement"
        released = await ask(ws, {"type": "release", "allocation_id": held["allocation_id"]})
        assert released["success"], released
        assert (
            await ask(
                ws, allocation(clusters=["mixed-lab"], inputs={"gpus": 8, "node_filter": PIN})
            )
        )["success"]


SERVE = """
import asyncio, sys
from pathlib import Path
from apportion.app import Server
from tests.conftest import server_settings

async def main():
    server = Server(server_settings(Path(sys.argv[1])))
    await server.start()
    print(server.url, server.ws_url, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


REPO = Path(__file__).resolve().parent.parent


async def test_answered_hold_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        await live.load_demo_fleet()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE,
        str(data),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        _, ws_url = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with connect(ws_url, additional_headers=headers) as ws:
            held = await ask(
                ws,
                allocation(
                    adhoc=False,
                    lease_seconds=300,
                    clusters=["mixed-lab"],
                    inputs={"gpus": 8, "node_filter": PIN},
                ),
            )
        assert held["success"], held
    finally:
        # the answer arrived, so the hold was committed; now the server dies without warning
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
    async with running_server(data) as live:
        async with live.http.get(f"{live.url}/allocations") as response:
            holds = (await response.json())["data"]
        assert [h["allocation_id"] for h in holds] == [held["allocation_id"]]
        async with live.ws() as ws:
            blocked = await ask(
                ws, allocation(clusters=["mixed-lab"], inputs={"gpus": 1, "node_filter": PIN})
            )
        assert blocked["error"]["code"] == "NoFeasiblePlacement"


async def test_events_beyond_the_retention_are_pruned_when_the_server_starts(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        await live.load_demo_fleet()  # a cluster_updated event per cluster
        async with live.http.get(f"{live.url}/events") as response:
            first_run = await response.json()
    seqs = [e["seq"] for e in first_run["data"]]
    assert len(seqs) >= 2
    async with (
        running_server(data, event_retention_count=1) as live,
        live.http.get(f"{live.url}/events", params={"since": "0"}) as response,
    ):
        kept = await response.json()
    # only the newest event of the first run is left, and seq goes on from it
    assert [e["seq"] for e in kept["data"]][:1] == [seqs[-1]]
    assert all(e["seq"] >= seqs[-1] for e in kept["data"])
    assert kept["latest_seq"] >= seqs[-1]


async def test_a_deleted_jobs_number_is_never_given_to_another(tmp_path: Path) -> None:
    # seed 000 names jobs by this number (/api/resources/v1/jobs/{id})
    data = tmp_path / "data"
    body = {"config": {"command": ["true"], "queue": "default", "name": "numbered"}}
    async with running_server(data) as live:
        ids = []
        for _ in range(2):
            async with live.http.post(f"{live.url}/jobs", json=body) as response:
                assert response.status == 201
                ids.append((await response.json())["job_id"])
        async with live.http.delete(f"{live.url}/jobs/{ids[1]}") as response:
            assert response.status == 202  # the newest, number 2
    async with running_server(data) as live:
        async with live.http.post(f"{live.url}/jobs", json=body) as response:
            later = (await response.json())["job_id"]
        jobs = live.server.context.jobs  # type: ignore[union-attr]
        assert jobs is not None
        assert (jobs.jobs.get(ids[0]).seq, jobs.jobs.get(later).seq) == (1, 3)


async def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data):
        second = Server(server_settings(data))
        with pytest.raises(DataDirInUse) as refused:
            await second.start()
        assert str(refused.value) == (
            f"another Apportion server (pid {os.getpid()}) is using the data dir {data}: a data"
            " dir and its SQLite database serve one server process. Stop that server, or start"
            " this one with its own --data-dir"
        )
    async with running_server(data):  # the first one stopped: the data dir is free again
        pass


async def test_apportion_serve_on_a_data_dir_in_use_says_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data):
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apportion", "serve", "--port", "0", "--ws-port", "0",
            "--data-dir", str(data),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "APPORTION_ADMIN_KEY": ADMIN_KEY},
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(serve.communicate(), 60)
        finally:
            if serve.returncode is None:
                serve.kill()
                await serve.wait()
    assert serve.returncode == 1
    assert "is using the data dir" in err.decode()
    assert "start this one with its own --data-dir" in err.decode()
