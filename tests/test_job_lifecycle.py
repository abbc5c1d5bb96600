"""The job lifecycle's table of transitions, and the server's one task group (a stop waits for an
in-flight dispatch and leaves no task behind)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from apportion.adapters.base import JobSpec
from apportion.adapters.local.adapter import LocalAdapter
from apportion.app import Server
from apportion.background import Background
from apportion.jobs.fairshare import UsageBook
from apportion.jobs.lifecycle import TRANSITIONS, IllegalTransition
from apportion.jobs.models import JobStatus
from apportion.jobs.priority import WEEK, SchedulingConfig
from apportion.jobs.records import Job, JobBook
from apportion.jobs.service import JobService
from apportion.store.db import Database
from tests.conftest import ADMIN_KEY, Running, running_server, server_settings
from tests.jobs_helpers import PY, create_queue, statuses, submit, wait_for


def service_of(running: Running) -> JobService:
    context = running.server.context
    assert context is not None and context.jobs is not None
    return context.jobs


# ---------------------------------------------------------------------------- transitions


def test_the_table_is_seed_001s_life_with_requeue_and_create_then_submit() -> None:
    s = JobStatus
    assert dict(TRANSITIONS) == {
        s.CREATED: {s.QUEUED, s.CANCELLED},  # seed 003: created, then submitted (or cancelled)
        s.QUEUED: {s.SCHEDULED, s.CANCELLED},
        s.SCHEDULED: {s.RUNNING, s.FAILED, s.CANCELLED, s.QUEUED},  # queued: preempted
        s.RUNNING: {s.COMPLETED, s.FAILED, s.CANCELLED, s.QUEUED},
        s.COMPLETED: set(),
        s.FAILED: set(),
        s.CANCELLED: set(),
    }


async def test_a_transition_not_in_the_table_is_refused_and_logged(
    running: Running, fleet: object, caplog: pytest.LogCaptureFixture
) -> None:
    # the queue's cluster is not registered: the job stays queued
    await create_queue(running, name="later", clusters=["not-registered-yet"])
    job_id = await submit(running, {"queue": "later", "command": [PY, "-c", "pass"]})
    service = service_of(running)
    job = service.jobs.get(job_id)
    with (
        caplog.at_level(logging.ERROR, logger="apportion.jobs.lifecycle"),
        pytest.raises(IllegalTransition) as refused,
    ):
        await service.lifecycle.end(job, JobStatus.COMPLETED, reason="not a transition")
    assert (refused.value.current, refused.value.target) == (JobStatus.QUEUED, JobStatus.COMPLETED)
    assert f"job {job_id}: queued → completed is not a transition" in caplog.text
    # nothing was applied: not in memory, not in the store
    assert job.status is JobStatus.QUEUED and job.end_time is None
    assert await statuses(running, job_id) == ["queued"]


async def test_an_end_is_recorded_once(running: Running, fleet: object) -> None:
    job_id = await submit(running, {"command": [PY, "-c", "pass"]})
    await wait_for(running, job_id, "completed")
    service = service_of(running)
    job = service.jobs.get(job_id)
    await service.lifecycle.end(job, JobStatus.FAILED, reason="seen late by a second poll")
    assert job.status is JobStatus.COMPLETED and job.failed_reason is None
    assert await statuses(running, job_id) == ["queued", "scheduled", "running", "completed"]


async def test_the_book_keeps_its_unfinished_jobs_apart(running: Running, fleet: object) -> None:
    """What admission, the queue's counts and the watch walk: the jobs not finished, kept by
    the book as their statuses change — an ended job leaves them, a loaded book has every
    stored job but only the unfinished ones among them."""
    await create_queue(running, name="later", clusters=["not-registered-yet"])
    waiting = await submit(running, {"queue": "later", "command": [PY, "-c", "pass"]})
    cancelled = await submit(running, {"queue": "later", "command": [PY, "-c", "pass"]})
    done = await submit(running, {"command": [PY, "-c", "pass"]})
    await wait_for(running, done, "completed")
    service = service_of(running)
    await service.cancel(cancelled)
    book = service.jobs
    assert set(book.jobs) == {waiting, cancelled, done}
    assert set(book.unfinished) == {waiting}
    db = await Database.open(running.server.settings.database_url)
    try:
        loaded = JobBook(db, usage=UsageBook(WEEK))
        await loaded.load()
        assert set(loaded.jobs) == {waiting, cancelled, done}
        assert set(loaded.unfinished) == {waiting}
    finally:
        await db.close()
    await service.delete(waiting)
    assert waiting not in book.jobs and not book.unfinished


# ---------------------------------------------------------------------------- the task group


class GatedAdapter(LocalAdapter):
    """The local adapter, whose ``submit`` waits for the test's gate before it starts anything."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.submitted: list[str] = []

    async def submit(self, spec: JobSpec) -> str:
        self.entered.set()
        await self.gate.wait()
        scheduler_job_id = await super().submit(spec)
        self.submitted.append(scheduler_job_id)
        return scheduler_job_id


async def test_a_stop_waits_for_an_in_flight_dispatch_and_leaves_no_task(
    tmp_path: Path, job_tmp: Path
) -> None:
    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await live.load_demo_fleet()
    adapter = GatedAdapter()
    server = Server(server_settings(data), adapters={"local": adapter})
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            command = [PY, "-c", f"open({str(marker)!r}, 'a').write('ran\\n')"]
            body = {"config": {"command": command}}
            async with http.post(f"{server.url}/jobs/submit", json=body) as response:
                assert response.status == 201
                job_id = (await response.json())["job_id"]
        async with asyncio.timeout(30):  # a deadline for a broken test, not a timing assertion
            await adapter.entered.wait()  # the dispatch is inside the adapter's submit
        loops = [t for t in server.background.tasks() if t.get_name() != f"dispatch-{job_id}"]
        assert {t.get_name() for t in loops} >= {"leases", "job-duty"}  # jobs/duty.py
        stopping = asyncio.create_task(server.stop())
        await asyncio.wait(loops)  # the stop cancelled every loop …
        assert all(t.cancelled() for t in loops)
        # … and waits for the dispatch
        assert [t.get_name() for t in server.background.tasks()] == [f"dispatch-{job_id}"]
        assert not stopping.done()
        adapter.gate.set()
        await stopping
    finally:
        adapter.gate.set()
        if stopping is None:
            await server.stop()
    assert server.background.tasks() == []
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not {n for n in names if n.startswith("dispatch-")}
    assert not names & {"admission", "dispatch-watch", "job-duty"}
    # the dispatch finished before the store closed: the backend id was committed
    db = await Database.open(server.settings.database_url)
    try:
        book = JobBook(db, usage=UsageBook(WEEK))
        await book.load()
        assert book.get(job_id).scheduler_job_id == adapter.submitted[0]
    finally:
        await db.close()
    # the next start adopts the job; it runs once
    async with running_server(data) as live:
        assert (await wait_for(live, job_id, "completed"))["status"] == "completed"
    assert marker.read_text() == "ran\n"


GATED_POLICY = """
import os, time

class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        with open({evals!r}, "a") as f:
            f.write("eval\\n")
        end = time.monotonic() + 60
        while not os.path.exists({gate!r}) and time.monotonic() < end:
            time.sleep(0.01)
        return [{{"cluster_id": "mixed-lab", "node_id": "mixed-lab-n03", "gpus": ["0"]}}]
"""


async def test_a_stop_lets_an_admission_cycle_under_way_finish(
    tmp_path: Path, job_tmp: Path
) -> None:
    data, evals, gate = tmp_path / "data", tmp_path / "evals.txt", tmp_path / "gate"
    marker = job_tmp / "ran.txt"
    code = tmp_path / "policies" / "gated" / "code"
    code.mkdir(parents=True)
    (code / "function.py").write_text(GATED_POLICY.format(evals=str(evals), gate=str(gate)))
    policies = tmp_path / "policies"
    async with running_server(data) as live:
        await live.load_demo_fleet()
    # the policy talks to the test through files in tmp_path: it needs no jail (this is about
    # the admission cycle), so it runs unsandboxed
    server = Server(server_settings(data, policy_dir=policies, unsandboxed_policies=True))
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            command = [PY, "-c", f"open({str(marker)!r}, 'a').write('ran\\n')"]
            body = {"config": {"command": command, "policy_rule_uri": "gated:0.0-dev"}}
            async with http.post(f"{server.url}/jobs/submit", json=body) as response:
                assert response.status == 201
                job_id = (await response.json())["job_id"]
        for _ in range(600):  # the cycle is inside the policy (a deadline, not a timing claim)
            if await asyncio.to_thread(evals.exists):
                break
            await asyncio.sleep(0.05)
        loops = [t for t in server.background.tasks() if t.get_name() != "admission-cycle"]
        stopping = asyncio.create_task(server.stop())
        await asyncio.wait(loops)  # every loop ended, the admission loop too …
        assert [t.get_name() for t in server.background.tasks()] == ["admission-cycle"]
        assert not stopping.done()  # … and the stop waits for the cycle
        gate.touch()
        await stopping
    finally:
        gate.touch()
        if stopping is None:
            await server.stop()
    assert server.background.tasks() == []
    # the cycle admitted and dispatched the job before the store closed: the next start
    # adopts it, and its placement is not decided a second time
    async with running_server(data, policy_dir=policies, unsandboxed_policies=True) as live:
        record = await wait_for(live, job_id, "completed", "failed")
        history = await statuses(live, job_id)
        async with live.http.get(f"{live.url}/fleet") as response:
            held = (await response.json())["totals"]["held"]
    assert record["status"] == "completed", record
    assert history == ["queued", "scheduled", "running", "completed"]
    assert evals.read_text() == "eval\n", "the placement was decided again after the restart"
    assert marker.read_text() == "ran\n" and held == 0


async def test_a_failing_task_is_logged_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    background = Background()
    await background.start()
    release = asyncio.Event()
    finished: list[str] = []

    async def broken() -> None:
        raise RuntimeError("boom")

    async def work() -> None:
        await release.wait()
        finished.append("work")

    with caplog.at_level(logging.ERROR, logger="apportion.background"):
        background.spawn(broken(), "broken")
        background.spawn(work(), "work")
        broken_task = next(t for t in background.tasks() if t.get_name() == "broken")
        await asyncio.wait([broken_task])
        assert "background task broken failed" in caplog.text
        assert [t.get_name() for t in background.tasks()] == ["work"]  # not cancelled
        release.set()
        await background.stop(grace=30)
    assert finished == ["work"] and background.tasks() == []


async def test_work_that_outlasts_the_grace_is_cancelled_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    background = Background()
    await background.start()
    never = asyncio.Event()
    cancelled: list[str] = []

    async def stuck() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise

    with caplog.at_level(logging.WARNING, logger="apportion.background"):
        background.spawn(stuck(), "stuck")
        await background.stop(grace=0.05)
        assert "background task stuck did not end within 0.05 s; cancelled" in caplog.text
        assert cancelled == ["stuck"] and background.tasks() == []
        # once stopped, new work is refused (its coroutine closed, never left pending)
        background.spawn(stuck(), "late")
        assert "background task late not started: the server is not running" in caplog.text
    assert background.tasks() == []


async def test_the_submits_of_a_burst_are_admitted_by_one_cycle(tmp_path: Path) -> None:
    # cycles start at least cycle_min_interval_seconds apart: the five submits made right
    # after the first job's cycle (well within 3 s of it) are admitted by one cycle, together
    spaced = SchedulingConfig(cycle_min_interval_seconds=3.0)
    async with running_server(tmp_path / "data", scheduling=spaced) as live:
        await live.load_demo_fleet()
        service = service_of(live)
        cycles: list[int] = []  # how many jobs each cycle started
        cycle = service.cycle

        async def counted() -> list[Job]:
            started = await cycle()
            if started:
                cycles.append(len(started))
            return started

        service.cycle = counted  # type: ignore[method-assign]
        first = await submit(live, {"command": [PY, "-c", "pass"]})
        await wait_for(live, first, "scheduled", "running", "completed")  # its cycle began
        burst = [await submit(live, {"command": [PY, "-c", "pass"]}) for _ in range(5)]
        for job_id in burst:
            await wait_for(live, job_id, "completed")
    assert cycles == [1, 5]
