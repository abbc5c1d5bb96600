"""Each worker's exit code in the job's record, and cleaning an ended job's own working
directory — on request (``POST /jobs/{id}/clean``) or at its end (``auto_clean``) — issue 12,
item 1 (seed 000's ``job-stats``, ``clean``, ``auto_clean`` and ``cleaned``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from apportion.clients import AsyncApportion
from tests.cli_helpers import cli, ok
from tests.conftest import ADMIN_KEY, Running, running_server
from tests.jobs_helpers import PY, gated, submit, wait_for

WRITES_A_FILE = [PY, "-c", "open('result.txt', 'w').write('42')"]


async def clean(running: Running, job_id: str) -> tuple[int, dict[str, Any]]:
    async with running.http.post(f"{running.url}/jobs/{job_id}/clean") as response:
        return response.status, await response.json()


async def test_each_workers_exit_code_is_recorded(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    fine = await submit(running, {"command": [PY, "-c", "pass"], "replica_count": 3})
    done = await wait_for(running, fine, "completed", "failed")
    assert (done["status"], done["exit_codes"]) == ("completed", [0, 0, 0])

    # worker 2 fails at once; the others, still running, are stopped as its gang
    code = "import os, sys, time\nif os.environ['APPORTION_WORKER_INDEX'] == '2': sys.exit(4)\ntime.sleep(300)"  # fmt: skip
    broken = await submit(running, {"command": [PY, "-c", code], "replica_count": 3})
    done = await wait_for(running, broken, "failed", "completed")
    assert done["status"] == "failed" and done["return_code"] == 4
    codes = done["exit_codes"]
    assert len(codes) == 3 and codes[2] == 4
    assert all(c is not None and c != 0 for c in codes[:2]), codes  # stopped, not succeeded


async def test_an_ended_jobs_own_directory_is_cleaned_and_nothing_else(
    running: Running, fleet: list[dict[str, Any]], jobs_root: Path, job_tmp: Path
) -> None:
    job_id = await submit(running, {"command": WRITES_A_FILE})
    done = await wait_for(running, job_id, "completed", "failed")
    own = jobs_root / job_id
    assert done["cleaned"] is False and (own / "result.txt").read_text() == "42"
    status, answer = await clean(running, job_id)
    assert status == 200 and answer["cleaned"] is True
    assert answer["message"] == f"removed its working directory {own}"
    assert not own.exists()
    record = await wait_for(running, job_id, "completed")
    assert record["cleaned"] is True
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        assert response.status == 200  # its logs stay
    status, answer = await clean(running, job_id)  # again: nothing left, not an error
    assert status == 200 and answer["message"].startswith("nothing to remove")

    # a directory the job was given (here: by its queue) is never removed
    queue = {"name": "given", "working_dir": str(job_tmp)}
    async with running.http.post(f"{running.url}/queues", json=queue) as response:
        assert response.status == 201
    given = await submit(running, {"command": WRITES_A_FILE, "queue": "given"})
    await wait_for(running, given, "completed", "failed")
    status, answer = await clean(running, given)
    assert status == 200 and answer["message"].startswith("nothing removed")
    assert (job_tmp / "result.txt").exists()

    # a job that has not ended is not cleaned
    gate = job_tmp / "gate"
    waiting = await submit(running, {"command": gated(gate)})
    await wait_for(running, waiting, "running")
    status, answer = await clean(running, waiting)
    assert status == 409 and "only an ended job is cleaned" in answer["message"]
    gate.touch()
    await wait_for(running, waiting, "completed")


async def test_auto_clean_removes_it_at_the_end_and_both_survive_a_restart(
    tmp_path: Path, jobs_root: Path
) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        await live.load_demo_fleet()
        job_id = await submit(live, {"command": WRITES_A_FILE, "auto_clean": True})
        await wait_for(live, job_id, "completed", "failed")
        for _ in range(200):
            record = await wait_for(live, job_id, "completed")
            if record["cleaned"]:
                break
            await asyncio.sleep(0.05)
        assert record["cleaned"] is True and record["config"]["auto_clean"] is True
        assert not (jobs_root / job_id).exists()
    async with running_server(data) as live:
        record = await wait_for(live, job_id, "completed")
        assert (record["cleaned"], record["exit_codes"]) == (True, [0])


async def test_the_cli_and_the_client_clean(
    running: Running, fleet: list[dict[str, Any]], jobs_root: Path
) -> None:
    first = await submit(running, {"command": WRITES_A_FILE})
    second = await submit(running, {"command": WRITES_A_FILE})
    for job_id in (first, second):
        await wait_for(running, job_id, "completed")
    said = ok(await cli(running, "clean", first))
    assert said.strip() == f"Job {first}: removed its working directory {jobs_root / first}"
    status = ok(await cli(running, "status", first))
    assert "its working directory was removed" in status
    failed = await cli(running, "clean", "no-such-job", second)
    assert failed.exit_code == 1 and "no-such-job" in failed.stderr
    assert not (jobs_root / second).exists()  # the other id was still cleaned
    async with AsyncApportion(running.url, api_key=ADMIN_KEY) as client:
        assert (await client.clean(second)).startswith("nothing to remove")
        assert (await client.job(second)).cleaned is True


async def test_keep_log_stores_the_whole_output_as_an_output_file(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    lines = "import sys\nfor i in range(3000): print('line', i)\nprint('oops', file=sys.stderr)"
    job_id = await submit(running, {"command": [PY, "-u", "-c", lines], "keep_log": True})
    done = await wait_for(running, job_id, "completed", "failed")
    async with running.http.get(f"{running.url}/files", params={"job_id": job_id}) as response:
        (stored,) = await response.json()
    assert stored["name"] == "process_output.log" and stored["type"] == "output"
    async with running.http.get(f"{running.url}/files/{stored['id']}/contents") as response:
        content = await response.text()
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        assert content == await response.text()  # the whole log, as the logs route serves it
    assert content.count("\n") == 3001 and "oops" in content
    assert done["status"] == "completed"
    async with running.http.get(f"{running.url}/jobs/{job_id}/statuses") as response:
        ended = (await response.json())[-1]
    assert (
        f"its log stored as process_output.log ({len(content.encode())} bytes)" in ended["reason"]
    )


async def test_clean_removes_a_link_inside_and_never_what_it_points_to(
    running: Running, fleet: list[dict[str, Any]], jobs_root: Path, job_tmp: Path
) -> None:
    outside = job_tmp / "precious.txt"
    outside.write_text("keep me")
    (job_tmp / "precious-dir").mkdir()
    (job_tmp / "precious-dir" / "inner.txt").write_text("keep me too")
    links = (
        f"import os; os.symlink({str(outside)!r}, 'to-file');"
        f" os.symlink({str(job_tmp / 'precious-dir')!r}, 'to-dir')"
    )
    job_id = await submit(running, {"command": [PY, "-c", links]})
    await wait_for(running, job_id, "completed")
    assert (jobs_root / job_id / "to-dir").is_symlink()
    status, answer = await clean(running, job_id)
    assert status == 200 and answer["cleaned"] is True
    assert not (jobs_root / job_id).exists()
    assert outside.read_text() == "keep me"
    assert (job_tmp / "precious-dir" / "inner.txt").read_text() == "keep me too"
