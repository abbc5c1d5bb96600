"""An accepted job survives a SIGKILL of the server at every step of its dispatch and runs exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY, running_server
from tests.jobs_helpers import PY, gone, sleeper, statuses, submit, wait_for

REPO = Path(__file__).resolve().parent.parent
SERVE = """
import asyncio, sys
from pathlib import Path
from apportion.app import Server
from tests.conftest import server_settings

async def main():
    server = Server(server_settings(Path(sys.argv[1])))
    await server.start()
    print(server.url, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def marker_command(marker: Path) -> list[str]:
    """A job that appends one line per run: the file's line count is how often it ran."""
    return [PY, "-c", f"open({str(marker)!r}, 'a').write('ran\\n')"]


async def start_crashing_server(
    data: Path, crash_at: str | None
) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("APPORTION_TEST_CRASH_AT", None)
    if crash_at:
        env["APPORTION_TEST_CRASH_AT"] = crash_at
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE, str(data), stdout=asyncio.subprocess.PIPE, cwd=REPO, env=env
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
    return process, url


@contextlib.asynccontextmanager
async def crashing(data: Path, crash_at: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A server over ``data`` that kills itself at ``crash_at``: a client session of the admin
    key and the server's URL; on leaving, checks the server died by its SIGKILL (it is killed
    if it did not)."""
    process, url = await start_crashing_server(data, crash_at)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            yield http, url
        assert await asyncio.wait_for(process.wait(), 30) == -9  # it killed itself there
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def submit_until_the_crash(data: Path, crash_at: str, config: dict[str, Any]) -> str:
    """Start a server over ``data`` that kills itself at ``crash_at``, submit a job of
    ``config`` to it, wait for the SIGKILL; return the job's id."""
    async with (
        crashing(data, crash_at) as (http, url),
        http.post(f"{url}/jobs/submit", json={"config": config}) as response,
    ):
        assert response.status == 201
        job_id: str = (await response.json())["job_id"]
    return job_id


@pytest.mark.parametrize("crash_at", ["before_submit", "after_submit"])
async def test_sigkill_during_dispatch_runs_the_job_exactly_once(
    tmp_path: Path, job_tmp: Path, crash_at: str
) -> None:
    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await live.load_demo_fleet()
    config = {"name": "once", "command": marker_command(marker)}
    job_id = await submit_until_the_crash(data, crash_at, config)  # at the dispatch's crash point
    async with running_server(data) as live:
        record = await wait_for(live, job_id, "completed", "failed")
        assert record["status"] == "completed", record
        history = await statuses(live, job_id)
    await asyncio.sleep(0.5)  # a second run, had there been one, would have written by now
    assert marker.read_text() == "ran\n", f"the job ran {marker.read_text().count('ran')} times"
    assert history[0] == "queued" and history[-1] == "completed"


async def test_sigkill_while_a_job_runs_is_adopted_after_restart(
    tmp_path: Path, job_tmp: Path
) -> None:
    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await live.load_demo_fleet()
    process, url = await start_crashing_server(data, None)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        command = [
            PY,
            "-c",
            f"import time; time.sleep(1.5); open({str(marker)!r}, 'a').write('ran\\n')",
        ]
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{url}/jobs/submit", json={"config": {"command": command}}) as r:
                job_id = (await r.json())["job_id"]
            for _ in range(200):
                async with http.get(f"{url}/jobs/{job_id}") as r:
                    if (await r.json())["status"] == "running":
                        break
                await asyncio.sleep(0.05)
    finally:
        process.kill()
        await process.wait()
    async with running_server(data) as live:
        record = await wait_for(live, job_id, "completed", "failed")
    assert record["status"] == "completed" and record["return_code"] == 0
    assert marker.read_text() == "ran\n"


async def test_a_crash_right_after_a_jobs_end_keeps_its_release_and_its_event(
    tmp_path: Path, job_tmp: Path
) -> None:
    # before, the hold stayed active after the restart with its 10-year lease: its GPUs were
    # lost to every later job and allocation (issue 21, item 11); and the end and its
    # job_completed event were two commits: a crash between them lost the event for good
    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await live.load_demo_fleet()
    config = {"command": marker_command(marker), "resources": {"gpus": 2}}
    job_id = await submit_until_the_crash(data, "after_end", config)  # after the end's commit
    async with running_server(data) as live:
        record = await wait_for(live, job_id, "completed", "failed")
        assert record["status"] == "completed", record
        context = live.server.context
        assert context is not None
        assert context.holds.active() == []
        assert not context.registry.fleet.held.any()
        async with live.http.get(f"{live.url}/events", params={"since": "0"}) as r:
            events = (await r.json())["data"]
        ended = [e for e in events if e["type"] == "job_completed" and e["job_id"] == job_id]
        assert [e["status"] for e in ended] == ["completed"]  # once, though the server died
    assert marker.read_text() == "ran\n"


async def test_a_crash_right_after_a_created_job_is_submitted_keeps_its_event(
    tmp_path: Path, job_tmp: Path
) -> None:
    # the move of a created job to queued and its job_queued event were two commits: a crash
    # between them left the job queued with no event announcing it, for good
    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await live.load_demo_fleet()
        async with live.http.post(
            f"{live.url}/jobs", json={"config": {"command": marker_command(marker)}}
        ) as response:
            assert response.status == 201
            job_id = (await response.json())["job_id"]
    async with crashing(data, "after_queued") as (http, url):
        with pytest.raises(aiohttp.ClientError):  # it died before it answered
            async with http.post(f"{url}/jobs/{job_id}/submit") as response:
                await response.read()
    async with running_server(data) as live:
        assert (await wait_for(live, job_id, "completed", "failed"))["status"] == "completed"
        async with live.http.get(f"{live.url}/events", params={"type": "job_queued"}) as r:
            queued = [e for e in (await r.json())["data"] if e["job_id"] == job_id]
        assert [e["queue_position"] for e in queued] == [1]  # once, with its position
        assert await statuses(live, job_id) == [
            "created", "queued", "scheduled", "running", "completed"
        ]  # fmt: skip
    assert marker.read_text() == "ran\n"


@pytest.mark.parametrize("sweep", ["every 5 s", "never"])
async def test_a_sigkilled_executor_fails_its_running_jobs_and_a_new_one_takes_over(
    tmp_path: Path, job_tmp: Path, sweep: str
) -> None:
    # "never": the watch's sweep does not look at local jobs, so only the executor's word (an
    # end; the loss of its connection) can have them polled
    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await live.load_demo_fleet()
        if sweep == "never":
            assert live.server.context is not None
            live.server.context.jobs.lifecycle.notified_poll_interval = 1e9
        job_id = await submit(live, {"command": sleeper(300)})
        await wait_for(live, job_id, "running")
        state = json.loads(
            (live.server.settings.local_jobs_dir / job_id / "worker-0.state.json").read_text()
        )
        executor, command = state["executor_pid"], state["pid"]
        os.kill(executor, signal.SIGKILL)  # started by this test's server, for its jobs
        record = await wait_for(live, job_id, "failed")
        assert record["failed_reason"] == (
            "worker 0 was lost: its executor died before recording its end"
        )
        for _ in range(500):  # SIGKILLed by the poll that found it orphaned (10 s at most)
            if gone(command):
                break
            await asyncio.sleep(0.02)
        assert gone(command)  # stopped: nobody could have recorded its end
        after = await submit(live, {"command": marker_command(marker)})
        assert (await wait_for(live, after, "completed", "failed"))["status"] == "completed"
        state = json.loads(
            (live.server.settings.local_jobs_dir / after / "worker-0.state.json").read_text()
        )
        assert state["executor_pid"] != executor  # a new executor started it
    assert marker.read_text() == "ran\n"
