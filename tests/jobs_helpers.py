"""Helpers for job tests: submit through REST, wait for states, small job commands, and
builders of job records and queues for the pure admission tests."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from apportion.adapters.base import RunAs
from apportion.jobs.identity import python_for_jobs
from apportion.jobs.models import JobConfig, JobStatus, QueueConfig, WorkerResources
from apportion.jobs.records import Job
from apportion.ownership import DEFAULT_ACCOUNT, Owner
from tests.conftest import Running

PY = python_for_jobs()  # an interpreter the job user can run (docs/security.md)
JOB_USER = "apportion-jobs"  # made by scripts/tenant_user.sh


def why_no_job_user() -> str | None:
    """Why jobs cannot run as :data:`JOB_USER` here (None when they can)."""
    if os.geteuid() != 0:
        return "the server is not root, so it cannot run jobs as another user"
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        return f"the job user {JOB_USER} does not exist: run scripts/tenant_user.sh as root"
    return None


def needs_job_user() -> None:
    """Skip the test when jobs cannot run as :data:`JOB_USER` — fail it under ``CI=true``."""
    why = why_no_job_user()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)


def job_user() -> RunAs:
    """:data:`JOB_USER` as a job runs as it."""
    entry = pwd.getpwnam(JOB_USER)
    groups = tuple(os.getgrouplist(JOB_USER, entry.pw_gid))
    return RunAs(JOB_USER, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts: it runs no more)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def sleeper(seconds: float) -> list[str]:
    return [PY, "-c", f"import time; time.sleep({seconds})"]


def gated(gate: Path, limit: float = 300.0) -> list[str]:
    """A job that runs until the test creates ``gate`` (or ``limit`` s pass, so a failed test
    leaves no process behind for long): the test, not the clock, decides when it ends."""
    code = (
        "import os, time\n"
        f"end = time.monotonic() + {limit}\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < end:\n"
        "    time.sleep(0.02)"
    )
    return [PY, "-c", code]


def exiting(code: int) -> list[str]:
    return [PY, "-c", f"import sys; print('bye'); sys.exit({code})"]


async def submit(running: Running, config: dict[str, Any], priority: int = 0) -> str:
    body = {"config": config, "priority": priority}
    async with running.http.post(f"{running.url}/jobs/submit", json=body) as response:
        answer = await response.json()
        assert response.status == 201, answer
    assert answer["status"] == "queued"
    return str(answer["job_id"])


async def refused(running: Running, config: dict[str, Any]) -> dict[str, Any]:
    """Submit ``config``; it must be refused (400): the error envelope."""
    async with running.http.post(f"{running.url}/jobs/submit", json={"config": config}) as r:
        answer: dict[str, Any] = await r.json()
        assert r.status == 400, answer
    return answer


LIMITED_QUEUE: dict[str, Any] = {
    "name": "limited",
    "default_resources": {"gpus": 1},
    "maximum_resources": {"gpus": 2},
    "maximum_allowed_resources": {"gpus": 3},
}
"""A queue with a default, a per-worker maximum and a total of GPUs (docs/jobs.md)."""


async def job(running: Running, job_id: str) -> dict[str, Any]:
    async with running.http.get(f"{running.url}/jobs/{job_id}") as response:
        assert response.status == 200
        record: dict[str, Any] = await response.json()
        return record


async def wait_for(
    running: Running, job_id: str, *states: str, within: float = 30.0
) -> dict[str, Any]:
    """Poll until the job is in one of ``states``; fail with its record otherwise."""
    record: dict[str, Any] = {}
    for _ in range(int(within / 0.05)):
        record = await job(running, job_id)
        if record["status"] in states:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {record}")


async def until_reason(running: Running, job_id: str, code: str, message: str = "") -> None:
    """Poll until the job waits for ``code`` with a message that starts with ``message``."""
    for _ in range(600):  # 30 s at least: a generous deadline, not a timing assertion
        record = await job(running, job_id)
        reason = record.get("reason") or {}
        if reason.get("code") == code and str(reason.get("message")).startswith(message):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never waited for {code}: {record}")


async def statuses(running: Running, job_id: str) -> list[str]:
    async with running.http.get(f"{running.url}/jobs/{job_id}/statuses") as response:
        return [entry["status"] for entry in await response.json()]


async def create_queue(running: Running, **fields: Any) -> None:
    async with running.http.post(f"{running.url}/queues", json=fields) as response:
        assert response.status == 201, await response.text()


def record(
    seq: int,
    *,
    queue: str = "q",
    status: JobStatus = JobStatus.QUEUED,
    priority: int = 0,
    workers: int = 1,
    bypassed: int = 0,
    gpus: int = 0,
) -> Job:
    """A job record built in memory (for the pure admission decisions): id ``j<seq>``, each of
    its ``workers`` with ``gpus`` GPUs."""
    return Job(
        job_id=f"j{seq}",
        seq=seq,
        queue=queue,
        name=f"j{seq}",
        status=status,
        priority=priority,
        config=JobConfig(
            command=["true"],
            queue=queue,
            replica_count=workers,
            resources=WorkerResources(gpus=gpus),
        ),
        owner=Owner(DEFAULT_ACCOUNT, "tester", None),
        created_at=0.0,
        bypassed=bypassed,
    )


def queue_config(
    name: str = "q", *, cap: int = -1, max_bypass: int = 10, **fields: Any
) -> QueueConfig:
    """A queue: ``cap`` is ``maximum_allowed_worker_instances`` (-1: unlimited)."""
    return QueueConfig(
        name=name, maximum_allowed_worker_instances=cap, max_bypass=max_bypass, **fields
    )


def run_counter(marker: Path) -> list[str]:
    """A job each of whose workers counts its runs in ``<marker>.<worker index>``: its first
    run lasts until it is stopped (or 300 s pass, so a failed test leaves nothing behind for
    long), later runs end at once."""
    code = (
        "import os, pathlib, time\n"
        f"p = pathlib.Path({str(marker)!r} + '.' + os.environ['APPORTION_WORKER_INDEX'])\n"
        "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n"
        "end = time.monotonic() + (300 if p.read_text() == '1' else 0)\n"
        "while time.monotonic() < end: time.sleep(0.05)\n"
    )
    return [PY, "-c", code]


def runs_counted(marker: Path, worker: int = 0) -> str:
    """How many runs of a :func:`run_counter` job's ``worker`` were counted."""
    return Path(f"{marker}.{worker}").read_text()


async def until_counted(marker: Path, workers: int = 1, *, within: float = 60.0) -> None:
    """Wait until each of ``workers`` workers of a :func:`run_counter` job has counted its
    first run: a job "running" may not have run its command on every worker yet, and one
    stopped before that would count its second run as its first."""
    for _ in range(int(within / 0.05)):
        if all(_counted(marker, w) == "1" for w in range(workers)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not every worker of {marker} counted its first run")


def _counted(marker: Path, worker: int) -> str:
    path = Path(f"{marker}.{worker}")
    return path.read_text() if path.exists() else ""
