"""Dispatch: from a placed, held job to a running backend job, and back to a finished record.

Intent is written before it is acted on:

1. ``start`` commits the job as ``scheduled`` with its allocation and a dispatch token;
2. the adapter's ``submit`` tags the backend job with the Apportion job id;
3. the backend's id is committed and ``job_scheduled`` announced.

A crash between 1 and 3 is healed by :meth:`Dispatcher.reconcile` at the next start: the
adapter is asked whether it has the tagged job — if so it is adopted (never submitted twice),
if not it is submitted again. :meth:`Dispatcher.watch` polls every active job and records
``running`` and the end (``completed``/``failed``/``cancelled``, with the return code).

``APPORTION_TEST_CRASH_AT=before_submit|after_submit`` makes the process SIGKILL itself at that
step; the crash tests use it, nothing else should.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from apportion.adapters.base import (
    Adapter,
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    WorkerSpec,
)
from apportion.allocation.hold import Hold
from apportion.allocation.holds import HoldManager
from apportion.engine.decisions import placements_json
from apportion.errors import UnknownAllocation
from apportion.event_sink import EventSink
from apportion.jobs.models import JobStatus
from apportion.jobs.records import Job, JobBook, iso
from apportion.registry.service import Registry

log = logging.getLogger(__name__)


POLL_CONCURRENCY = 32  # jobs the watch polls at once

_END_STATES = {
    BackendState.COMPLETED: JobStatus.COMPLETED,
    BackendState.FAILED: JobStatus.FAILED,
    BackendState.CANCELLED: JobStatus.CANCELLED,
}


class Finish(Protocol):
    async def __call__(
        self,
        job: Job,
        status: JobStatus,
        *,
        reason: str,
        return_code: int | None = None,
        ended_at: float | None = None,
    ) -> None: ...


def crash_point(step: str) -> None:
    """Die here, like a power cut, when the crash tests ask for it."""
    if os.environ.get("APPORTION_TEST_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


class Dispatcher:
    """Hands placed jobs to their adapters and watches them until they end."""

    def __init__(
        self,
        holds: HoldManager,
        registry: Registry,
        adapters: Mapping[str, Adapter],
        data_dir: Path,
        emit: EventSink,
    ) -> None:
        self._holds = holds
        self._registry = registry
        self.adapters = adapters
        self._jobs_dir = data_dir / "jobs"
        self._emit = emit
        self._book: JobBook | None = None
        self._finish: Finish | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._specs: dict[str, JobSpec] = {}
        self._poll_locks: dict[str, asyncio.Lock] = {}  # one poll of a job at a time

    def bind(self, book: JobBook, finish: Finish) -> None:
        """Called once by the job service that owns the records."""
        self._book, self._finish = book, finish

    @property
    def book(self) -> JobBook:
        assert self._book is not None, "Dispatcher.bind was not called"
        return self._book

    # ---------------------------------------------------------------- specs
    def adapter_for(self, job: Job) -> Adapter:
        name = job.adapter or "local"
        adapter = self.adapters.get(name)
        if adapter is None:
            raise AdapterError(
                f"no {name!r} scheduler adapter is configured on this server "
                f"(available: {', '.join(sorted(self.adapters))})"
            )
        return adapter

    def spec(self, job: Job) -> JobSpec:
        """The adapter's view of a job (cached; derived from the record alone)."""
        cached = self._specs.get(job.job_id)
        if cached is not None:
            return cached
        placements = job.allocation or []
        cluster_id = placements[0]["cluster_id"] if placements else ""
        scheduler: dict[str, Any] = {"type": job.adapter or "local"}
        if self._registry.has_cluster(cluster_id):
            scheduler = dict(
                self._registry.get_cluster(cluster_id).get("config", {}).get("scheduler")
                or scheduler
            )
        resources = job.config.resources
        spec = JobSpec(
            job_id=job.job_id,
            name=job.name,
            command=tuple(job.config.command),
            cluster_id=cluster_id,
            scheduler=scheduler,
            workers=tuple(
                WorkerSpec(
                    index=i,
                    node_id=str(p.get("node_id", "")),
                    gpus=tuple(str(g) for g in p.get("gpus", [])),
                    vcpus=resources.vcpus,
                    memory_mb=resources.memory_mb,
                )
                for i, p in enumerate(placements)
            ),
            output_dir=self._jobs_dir / job.job_id,
            env=dict(job.config.env),
            working_dir=job.config.working_dir,
            walltime_seconds=job.config.walltime,
            labels=dict(job.config.labels),
        )
        self._specs[job.job_id] = spec
        return spec

    # ---------------------------------------------------------------- dispatch
    async def start(self, job: Job, hold: Hold) -> None:
        """Record the intent (``scheduled``) and dispatch in the background."""
        cluster_id = hold.placements[0].cluster_id
        cluster = (
            self._registry.get_cluster(cluster_id) if self._registry.has_cluster(cluster_id) else {}
        )
        job.allocation = placements_json(hold.placements)
        job.allocation_id = hold.allocation_id
        job.adapter = str(cluster.get("config", {}).get("scheduler", {}).get("type", "local"))
        job.dispatch_token = uuid.uuid4().hex
        nodes = ", ".join(sorted({str(p.node_id) for p in hold.placements}))
        await self.book.save(
            job, status=JobStatus.SCHEDULED, reason=f"placed on {cluster_id}: {nodes}"
        )
        self._launch(job)

    def _launch(self, job: Job) -> None:
        task = asyncio.create_task(self._dispatch(job), name=f"dispatch-{job.job_id}")
        self._in_flight[job.job_id] = task
        task.add_done_callback(lambda _: self._in_flight.pop(job.job_id, None))

    async def _dispatch(self, job: Job) -> None:
        assert self._finish is not None
        if job.cancel_requested:
            await self._finish(job, JobStatus.CANCELLED, reason="cancelled before dispatch")
            return
        spec = self.spec(job)
        try:
            adapter = self.adapter_for(job)
            await asyncio.to_thread(spec.output_dir.mkdir, parents=True, exist_ok=True)
            crash_point("before_submit")
            scheduler_job_id = await adapter.submit(spec)
            crash_point("after_submit")
        except AdapterError as exc:
            await self._finish(job, JobStatus.FAILED, reason=f"dispatch failed: {exc.message}")
            return
        except Exception as exc:
            log.exception("dispatch of job %s failed", job.job_id)
            await self._finish(job, JobStatus.FAILED, reason=f"dispatch failed: {exc}")
            return
        await self._adopt(job, scheduler_job_id)

    async def _adopt(self, job: Job, scheduler_job_id: str) -> None:
        job.scheduler_job_id = scheduler_job_id
        await self.book.save(job)
        await self._emit(
            "job_scheduled",
            {
                "job_id": job.job_id,
                "scheduler_job_id": scheduler_job_id,
                "allocation": job.allocation,
                "adapter": job.adapter,
                "queue": job.queue,
            },
        )
        if job.cancel_requested:
            await self.cancel(job)

    async def reconcile(self) -> None:
        """At start: adopt what reached the backend, dispatch again what did not."""
        for job in list(self.book.jobs.values()):
            if not job.status.active or job.scheduler_job_id is not None:
                continue
            try:
                found = await self.adapter_for(job).find(self.spec(job))
            except AdapterError as exc:
                log.error("reconciling job %s: %s", job.job_id, exc.message)
                continue
            if found is not None:
                log.info(
                    "job %s reached its backend before a restart; adopted as %s", job.job_id, found
                )
                await self._adopt(job, found)
            else:
                log.info("job %s never reached its backend; dispatching it again", job.job_id)
                self._launch(job)

    # ---------------------------------------------------------------- watching
    async def watch(self, *, interval: float = 0.5) -> None:
        """Poll every dispatched job until cancelled: a sweep every ``interval`` seconds, up to
        :data:`POLL_CONCURRENCY` jobs at once (one job's slow backend call or commit does not
        hold up the others, and their commits share fsyncs)."""
        slots = asyncio.Semaphore(POLL_CONCURRENCY)

        async def poll_one(job: Job) -> None:
            async with slots:
                try:
                    await self.poll(job)
                except Exception:
                    log.exception("polling job %s failed", job.job_id)

        while True:
            await asyncio.sleep(interval)
            active = [j for j in self.book.jobs.values() if j.status.active and j.scheduler_job_id]
            await asyncio.gather(*(poll_one(job) for job in active))

    async def poll(self, job: Job) -> None:
        """Bring one job's record up to date with its backend (one poll of a job at a time:
        the watch and a cancel never both record its start or end)."""
        lock = self._poll_locks.setdefault(job.job_id, asyncio.Lock())
        async with lock:
            if job.status.active:
                await self._poll(job)

    async def _poll(self, job: Job) -> None:
        assert self._finish is not None and job.scheduler_job_id is not None
        adapter = self.adapter_for(job)
        spec = self.spec(job)
        status = await adapter.poll(spec, job.scheduler_job_id)
        if (
            status.state in (BackendState.RUNNING, *_END_STATES)
            and job.status is JobStatus.SCHEDULED
        ):
            await self._started(job, status)
        if status.state.finished:
            await self._record_usage(job, adapter, spec)
            await self._finish(
                job,
                JobStatus.CANCELLED if job.cancel_requested else _END_STATES[status.state],
                reason=status.reason or status.state.value,
                return_code=status.return_code,
                ended_at=status.ended_at,
            )
        elif status.state is BackendState.UNKNOWN:
            await self._finish(
                job, JobStatus.FAILED, reason="the scheduler has no record of the job anymore"
            )
        elif status.state is BackendState.RUNNING:
            await self._record_usage(job, adapter, spec)

    async def _started(self, job: Job, status: BackendStatus) -> None:
        job.start_time = status.started_at or time.time()
        await self.book.save(job, status=JobStatus.RUNNING, reason="started")
        await self._emit(
            "job_started",
            {
                "job_id": job.job_id,
                "start_time": iso(job.start_time),
                "resources": {
                    "allocation": job.allocation,
                    "per_worker": job.config.resources.model_dump(exclude_none=True),
                    "workers": job.workers,
                },
            },
        )

    async def _record_usage(self, job: Job, adapter: Adapter, spec: JobSpec) -> None:
        assert job.scheduler_job_id is not None
        try:
            job.resource_usage = await adapter.usage(spec, job.scheduler_job_id)
        except AdapterError as exc:
            log.debug("no usage for job %s: %s", job.job_id, exc.message)

    # ---------------------------------------------------------------- ends
    async def cancel(self, job: Job) -> None:
        """Stop a dispatched job; a job not yet dispatched is stopped by its dispatch task."""
        assert self._finish is not None
        if job.scheduler_job_id is not None:
            await self.adapter_for(job).cancel(self.spec(job), job.scheduler_job_id)
            await self.poll(job)
        elif job.job_id not in self._in_flight:
            await self._finish(job, JobStatus.CANCELLED, reason="cancelled before dispatch")

    async def abandon(self, hold: Hold) -> None:
        """Give back the GPUs of a placement whose job ended before it could start."""
        with contextlib.suppress(UnknownAllocation):
            await self._holds.release(hold.allocation_id)

    async def release(self, job: Job) -> None:
        """Give the job's GPUs back."""
        self._specs.pop(job.job_id, None)
        self._poll_locks.pop(job.job_id, None)
        if job.allocation_id is None:
            return
        with contextlib.suppress(UnknownAllocation):
            await self._holds.release(job.allocation_id)
