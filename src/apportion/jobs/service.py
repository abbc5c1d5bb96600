"""The job service: submit, cancel, re-prioritise, delete, limits — and the admission cycle.

Runs on the event loop. Every state change is committed (``JobBook``) before it is
acknowledged or announced, and every announcement goes through ``emit`` (the event log,
stored before it is sent to Socket.IO clients). Dispatch to the scheduler adapters and
watching what they run is :class:`~apportion.jobs.dispatch.Dispatcher`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

from apportion.allocation.hold import Hold
from apportion.allocation.service import AllocationService
from apportion.engine.decisions import Decision
from apportion.errors import ApportionError, Conflict, InvalidRequest
from apportion.event_sink import EventSink
from apportion.jobs import views as job_views
from apportion.jobs.admission import CycleState, Reason, waiting_order
from apportion.jobs.dispatch import Dispatcher
from apportion.jobs.models import (
    JobConfig,
    JobStatus,
    PriorityRequest,
    QueueConfig,
    SubmitRequest,
    parse_model,
)
from apportion.jobs.pool_limits import PoolLimits
from apportion.jobs.records import Job, JobBook, QueueBook, iso
from apportion.registry.service import Registry
from apportion.store.db import Database

log = logging.getLogger(__name__)


class JobService:
    """Jobs and queues, from ``POST /jobs/submit`` to ``job_completed``."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        allocations: AllocationService,
        dispatcher: Dispatcher,
        emit: EventSink,
    ) -> None:
        self._registry = registry
        self._allocations = allocations
        self.dispatcher = dispatcher
        self._emit = emit
        self.jobs = JobBook(db)
        self.queues = QueueBook(db)
        self.limits = PoolLimits(db)
        self._wake = asyncio.Event()
        self.admissions = 0
        dispatcher.bind(self.jobs, self.finish)

    async def load(self) -> None:
        await self.jobs.load()
        await self.queues.load()
        await self.limits.load()
        self._number_positions()

    def wake(self) -> None:
        """Ask for an admission cycle soon (after a submit, an end, a limit change…)."""
        self._wake.set()

    # ---------------------------------------------------------------- API
    async def submit(self, body: Any, owner: str | None) -> Job:
        request = parse_model(SubmitRequest, body)
        config = request.config
        queue = self.queues.get(config.queue) if config.queue in self.queues.names() else None
        if queue is None:
            raise InvalidRequest(
                f"config.queue {config.queue!r} does not exist; list queues with GET /queues",
                path="body.config.queue",
            )
        self._check_against_queue(config, queue)
        job = await self.jobs.create(config, request.priority, owner, "submitted")
        self._number_positions()
        job.reason_code, job.reason = Reason.QUEUED, "waiting for the next admission cycle"
        await self._emit(
            "job_queued",
            {
                "job_id": job.job_id,
                "priority": job.priority,
                "queue_position": job.queue_position,
                "queue": job.queue,
                "name": job.name,
            },
        )
        self.wake()
        return job

    @staticmethod
    def _check_against_queue(config: JobConfig, queue: QueueConfig) -> None:
        cap = queue.worker_cap
        if cap is not None and config.replica_count > cap:
            raise InvalidRequest(
                f"config.replica_count {config.replica_count} can never run in queue "
                f"{queue.name!r}: its cap is {cap} worker instances",
                path="body.config.replica_count",
            )

    async def cancel(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job.status.finished:
            return job
        if job.status is JobStatus.QUEUED:
            await self.finish(job, JobStatus.CANCELLED, reason="cancelled while queued")
            return job
        job.cancel_requested = True
        await self.jobs.save(job)
        await self.dispatcher.cancel(job)
        return job

    async def set_priority(self, job_id: str, body: Any) -> Job:
        priority = parse_model(PriorityRequest, body).priority
        job = self.jobs.get(job_id)
        if job.status is not JobStatus.QUEUED:
            raise Conflict(
                f"job {job_id} is {job.status.value}; only a queued job's priority can change",
                details={"job_id": job_id, "status": job.status.value},
            )
        job.priority = priority
        await self.jobs.save(job)
        self._number_positions()
        self.wake()
        return job

    async def delete(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if not job.status.finished:
            await self.cancel(job_id)
            for _ in range(200):  # wait (bounded) for the backend to confirm
                if job.status.finished:
                    break
                await asyncio.sleep(0.05)
        await self.jobs.remove(job_id)

    async def set_limits(self, body: Any) -> dict[str, Any]:
        """``PUT /pool/limits``: validate and commit, announce ``limits_updated``, wake the
        cycle; return the new limits."""
        old, new = await self.limits.set(body)
        await self._emit("limits_updated", {"old_limits": old, "new_limits": new})
        self.wake()
        return new

    def select(
        self, *, status: str | None, queue: str | None, limit: int, offset: int
    ) -> list[Job]:
        """``GET /jobs``: see :func:`job_views.select_jobs`."""
        return job_views.select_jobs(
            self.jobs.jobs.values(), status=status, queue=queue, limit=limit, offset=offset
        )

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """``{queue: (queued, running)}`` for the Prometheus gauges."""
        return job_views.queue_counts(self.jobs.jobs.values(), self.queues)

    def statistics(self) -> dict[str, Any]:
        """``GET /queue`` (seed 001): totals, per queue and per priority."""
        return job_views.statistics(self.jobs.jobs.values(), self.queues, self.limits.as_dict())

    # ---------------------------------------------------------------- admission
    def _number_positions(self) -> None:
        position: dict[str, int] = {}
        for job in self.jobs.jobs.values():
            job.queue_position = None
        for job in waiting_order(self.jobs.jobs.values()):
            position[job.queue] = position.get(job.queue, 0) + 1
            job.queue_position = position[job.queue]

    async def run(self, *, interval: float = 1.0) -> None:
        """The admission loop: a cycle when woken, and at least every ``interval`` seconds."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and this loop would then never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.cycle()
            except Exception:
                log.exception("admission cycle failed; retrying at the next one")

    async def cycle(self) -> list[Job]:
        """One admission pass over the queued jobs; return the jobs it started.

        Decisions are taken one job after another (each sees the GPUs the previous ones
        reserved); making them durable — the holds, the ``scheduled`` records, the bypass
        counts — is started per job and awaited together at the end, so the jobs admitted in
        one cycle share their commits."""
        waiting = waiting_order(self.jobs.jobs.values())
        state = CycleState.of(self.jobs.jobs.values(), self.limits.get("max_concurrent_jobs"))
        queues = {name: self.queues.get(name) for name in self.queues.names()}
        state.note_starving(waiting, queues)
        started: list[Job] = []
        durable: list[Awaitable[None]] = []
        for job in waiting:
            if job.status is not JobStatus.QUEUED:  # cancelled since the cycle began
                continue
            queue = queues.get(job.queue)
            if queue is None:
                await self._wait(job, Reason.NO_RESOURCES, f"queue {job.queue!r} was removed")
                continue
            blocked = state.blocker(job, queue)
            placed = None
            if blocked is None:
                placed, blocked = await self._place(job, queue)
            if job.status.finished:  # cancelled while it was being placed
                if placed is not None:
                    durable.append(self.dispatcher.abandon(placed[0]))
                continue
            if blocked is not None:
                state.waited(job)
                await self._wait(job, *blocked)
                continue
            assert placed is not None  # _place gives a placement or a reason
            durable.append(self._start(job, *placed))
            durable.extend(self.jobs.save(passed) for passed in state.started(job, queue))
            started.append(job)
            self.admissions += 1
        for failure in await asyncio.gather(*durable, return_exceptions=True):
            if isinstance(failure, BaseException):
                log.error("admission: recording a start failed: %r", failure)
        self._number_positions()
        return started

    async def _wait(self, job: Job, code: str, words: str) -> None:
        if (job.reason_code, job.reason) != (code, words):
            job.reason_code, job.reason = code, words
            await self.jobs.save(job)

    async def _place(
        self, job: Job, queue: QueueConfig
    ) -> tuple[tuple[Hold, Decision] | None, tuple[str, str] | None]:
        """Place the job's workers through its policy and reserve their GPUs: ``(hold and
        decision record, None)``, or ``(None, (reason code, words))`` when it cannot start."""
        request = job.config.resources.as_request()
        try:
            placed = await self._allocations.reserve_for_job(
                policy_uri=job.config.policy_rule_uri or queue.policy_rule_uri,
                candidates=self._candidates(queue),
                inputs={"requests": [request] * job.workers},
                parameters=job.config.parameters,
                owner=job.owner,
                job_id=job.job_id,
            )
        except ApportionError as exc:
            code = (
                Reason.NO_RESOURCES if exc.code.value == "NoFeasiblePlacement" else exc.code.value
            )
            return None, (code, exc.message)
        return placed, None

    async def _start(self, job: Job, hold: Hold, decision: Decision) -> None:
        """Make the hold durable and hand the job to the dispatcher — unless it was cancelled
        meanwhile (the hold is given back). A hold that cannot be recorded leaves the job
        queued, with the reason, for the next cycle."""
        try:
            await self._allocations.commit_hold(hold)
        except Exception as exc:
            await self._wait(
                job, Reason.QUEUED, f"its GPUs could not be recorded ({exc}); retrying"
            )
            return
        if job.status is not JobStatus.QUEUED:
            await self.dispatcher.abandon(hold)
            return
        job.reason_code = job.reason = None
        job.decision = decision.to_json()
        await self.dispatcher.start(job, hold)

    def _candidates(self, queue: QueueConfig) -> list[str]:
        if isinstance(queue.clusters, dict):
            ids = self._registry.filter_cluster_ids(
                queue.clusters, path=f"queue {queue.name}.clusters"
            )
            return ids if ids is not None else self._registry.live_cluster_ids()
        if queue.clusters:
            return [c for c in queue.clusters if self._registry.has_cluster(c)]
        return self._registry.live_cluster_ids()

    async def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        reason: str,
        return_code: int | None = None,
        ended_at: float | None = None,
    ) -> None:
        """Record the end of a job, release its GPUs and announce it (idempotent)."""
        if job.status.finished:
            return
        job.end_time = ended_at or time.time()
        job.return_code = return_code
        if status is JobStatus.FAILED:
            job.failed_reason = reason
        job.reason_code = job.reason = None
        await self.jobs.save(job, status=status, reason=reason)
        await self.dispatcher.release(job)
        self._number_positions()
        await self._emit(
            "job_completed",
            {
                "job_id": job.job_id,
                "status": status.value,
                "queue": job.queue,
                "adapter": job.adapter,
                "end_time": iso(job.end_time),
                "return_code": return_code,
                "reason": reason,
            },
        )
        self.wake()
