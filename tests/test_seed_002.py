"""Seed 002's surface (hpc-queue-api's ``/jobs/``, served under ``/hpc/``), driven as its own
router tests drive it (issue 12): POST a job → 201 ``{"jobId"}``, list and read it with seed
002's fields and status names, DELETE → 202 ``{"detail": "jobId: …"}`` (the job stops, its
record stays ``STOPPED``), an unknown id 404, a missing field 400 naming it. Real server,
real local adapter, the real job user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running

SCRIPT = '#!/bin/sh\necho "$@" > "$(dirname "$0")/out.txt"\nexec sleep "${SLEEP:-0}"\n'


def work_dir(jobs_root: Path, *, sleep: bool = False) -> tuple[Path, Path]:
    """A working directory under the jobs root, the job user's, holding an executable
    script that writes its arguments to out.txt (then sleeps 300 s with ``sleep``)."""
    work = jobs_root / ("long" if sleep else "work")
    work.mkdir(mode=0o755)
    script = work / "run.sh"
    script.write_text(SCRIPT.replace("${SLEEP:-0}", "300" if sleep else "0"))
    script.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(work, "apportion-jobs", "apportion-jobs")
    return work, script


async def until(running: Running, job_id: str, status: str) -> dict[str, Any]:
    for _ in range(600):
        async with running.http.get(f"{running.url}/hpc/jobs/{job_id}") as response:
            job = await response.json()
        if job["status"] == status:
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}: {job}")


async def test_submit_read_list_and_stop_as_seed_002(
    running: Running, fleet: Any, jobs_root: Path
) -> None:
    work, script = work_dir(jobs_root)
    body = {
        "jobId": None,  # seed 002's README sends every key, the server's as null
        "name": None,
        "status": None,
        "workingDirectory": str(work),
        "reservedSlots": 2,
        "scriptFile": str(script),
        "args": ["a", "b c"],
    }
    async with running.http.post(f"{running.url}/hpc/jobs/", json=body) as response:
        created = await response.json()
        assert response.status == 201 and list(created) == ["jobId"], created
    job = await until(running, created["jobId"], "STOPPED")
    assert (job["name"], job["workingDirectory"], job["reservedSlots"]) == ("work", str(work), 2)
    assert (job["scriptFile"], job["args"]) == (str(script), ["a", "b c"])
    assert job["clusterId"] is not None and job["endTime"] is not None
    assert (work / "out.txt").read_text() == "a b c\n"  # argv items, never a shell string
    async with running.http.get(f"{running.url}/hpc/jobs/") as response:
        assert [j["jobId"] for j in await response.json()] == [created["jobId"]]
    async with running.http.get(f"{running.url}/hpc/jobs/{'0' * 32}") as response:
        assert response.status == 404


async def test_delete_stops_a_running_job_and_keeps_its_record(
    running: Running, fleet: Any, jobs_root: Path
) -> None:
    work, script = work_dir(jobs_root, sleep=True)
    body = {"workingDirectory": str(work), "reservedSlots": 1, "scriptFile": str(script)}
    async with running.http.post(f"{running.url}/hpc/jobs/", json=body) as response:
        job_id = (await response.json())["jobId"]
    await until(running, job_id, "RUNNING")
    async with running.http.delete(f"{running.url}/hpc/jobs/{job_id}") as response:
        assert response.status == 202
        assert await response.json() == {"detail": f"jobId: {job_id}"}
    await until(running, job_id, "STOPPED")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"reservedSlots": 1, "scriptFile": "/bin/true"}, "body.workingDirectory"),
        ({"workingDirectory": "/tmp", "scriptFile": "/bin/true"}, "body.reservedSlots"),
        (
            {"workingDirectory": "/tmp", "reservedSlots": 0, "scriptFile": "/bin/true"},
            "body.reservedSlots",
        ),
        (
            {
                "workingDirectory": "/tmp",
                "reservedSlots": 1,
                "scriptFile": "/bin/true",
                "queue": "x",
            },
            "body.queue",
        ),
        (
            {"workingDirectory": "/etc", "reservedSlots": 1, "scriptFile": "/bin/true"},
            "body.config.working_dir",
        ),
    ],
    ids=["no-working-directory", "no-slots", "zero-slots", "unknown-field", "outside-the-roots"],
)
async def test_a_bad_job_is_refused_naming_the_field(
    running: Running, fleet: Any, body: dict[str, Any], path: str
) -> None:
    async with running.http.post(f"{running.url}/hpc/jobs/", json=body) as response:
        answer = await response.json()
        assert response.status == 400, answer
    assert answer["error"]["details"]["path"] == path


async def test_programs_are_the_registered_applications(running: Running) -> None:
    # as the seed's README lists them: two NEWAVE versions and a DECOMP
    for name, version, script in (
        ("NEWAVE", "v28.16.4", "mpi_newave.job"),
        ("NEWAVE", "v28.6.2", "mpi_newave.job"),
        ("DECOMP", "v31.21", "mpi_decomp.job"),
    ):
        app = {
            "name": name,
            "version": version,
            "command": [f"/home/pem/rotinas/tuber/jobs/{script}", "N_PROC"],
            "attributes": {"installation_directory": f"/home/pem/versoes/{name}/{version}"},
        }
        async with running.http.post(f"{running.url}/applications", json=app) as response:
            assert response.status == 201
    async with running.http.get(f"{running.url}/hpc/programs/") as response:
        every = await response.json()
    assert [(p["name"], p["version"]) for p in every] == [
        ("NEWAVE", "v28.16.4"),
        ("NEWAVE", "v28.6.2"),
        ("DECOMP", "v31.21"),
    ]
    async with running.http.get(f"{running.url}/hpc/programs/?version=v31.21") as response:
        (decomp,) = await response.json()
    assert decomp == {
        "programId": decomp["programId"],
        "name": "DECOMP",
        "clusterId": None,
        "version": "v31.21",
        "installationDirectory": "/home/pem/versoes/DECOMP/v31.21",
        "isManaged": True,
        "executablePath": "/home/pem/rotinas/tuber/jobs/mpi_decomp.job",
        "args": ["N_PROC"],
    }
    async with running.http.get(f"{running.url}/hpc/programs/?name=NEWAVE") as response:
        assert [p["version"] for p in await response.json()] == ["v28.16.4", "v28.6.2"]
    async with running.http.get(f"{running.url}/hpc/programs/?program=x") as response:
        assert response.status == 400 and "program" in (await response.json())["message"]
