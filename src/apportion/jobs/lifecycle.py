"""The life of a job: the one writer of job records and the one owner of their holds.

Every change to a :class:`~apportion.jobs.records.Job` — its status, times, reason, priority,
bypass count, allocation, backend id, usage — and every reserve, commit and release of its GPUs
is made here, by :class:`JobLifecycle`. A status changes only along :data:`TRANSITIONS`; any
other change is refused with :class:`IllegalTransition` (logged, never applied). What the
backend does is asked by :class:`~apportion.jobs.driver.BackendDriver`, which only reports;
this module applies what it reports.

Intent is written before it is acted on:

1. :meth:`JobLifecycle.admit` commits the hold, then the job as ``scheduled`` with its
   allocation and a dispatch token, and only then starts the dispatch;
2. the dispatch has the adapter submit the job, tagged with the Apportion job id;
3. the backend's id is committed and ``job_scheduled`` announced.

A crash between 1 and 3 is healed by :meth:`JobLifecycle.reconcile` at the next start: the
adapter is asked whether it has the tagged job — if so it is adopted (never submitted twice), if
not it is submitted again. :meth:`JobLifecycle.watch` polls every dispatched job and records
``running`` and the end (``completed``/``failed``/``cancelled``, with the return code).

Every change is committed (``JobBook``) before it is announced, and every announcement goes
through ``emit`` (the event log, stored before it is sent). Runs on the event loop; dispatches
run under the server's task group (``spawn``), so a stop waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    NotifyingAdapter,
)
from apportion.allocation.hold import Hold
from apportion.allocation.holds import HoldManager
from apportion.allocation.service import AllocationService
from apportion.background import Spawn
from apportion.engine.decisions import Decision, Placement, Unplaceable
from apportion.errors import ApportionError, Conflict, UnknownAllocation
from apportion.event_sink import EventSink
from apportion.jobs.admission import Blocked, Reason
from apportion.jobs.driver import BackendDriver, SubmitFailed, crash_point
from apportion.jobs.models import JobConfig, JobStatus
from apportion.jobs.records import Job, JobBook
from apportion.ownership import Owner
from apportion.timefmt import iso_utc

log = logging.getLogger(__name__)

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        # submitted | cancelled before it was
        JobStatus.CREATED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
        # admitted (placed, hold committed) | cancelled while it waited
        JobStatus.QUEUED: frozenset({JobStatus.SCHEDULED, JobStatus.CANCELLED}),
        # a poll saw it start (or already end) | dispatch failed, or the backend lost it |
        # cancelled before it reached the backend | preempted, stopped and requeued
        JobStatus.SCHEDULED: frozenset(
            {JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
        ),
        # a poll saw it end: exit 0 | non-zero exit, or the backend lost it | cancelled |
        # preempted, stopped and requeued
        JobStatus.RUNNING: frozenset(
            {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
        ),
        # an end is final
        JobStatus.COMPLETED: frozenset(),
        JobStatus.FAILED: frozenset(),
        JobStatus.CANCELLED: frozenset(),
    }
)
"""The allowed status changes of a job: ``from → {to, …}`` (seed 001's states)."""

POLL_CONCURRENCY = 32  # jobs the watch polls at once
NOTIFIED_POLL_INTERVAL = 5.0
"""Seconds between the watch's polls of a job whose adapter says when it changed (the local
adapter): such a job is polled when its adapter says so, and this often besides (its usage is
sampled then; a word lost on the way costs this much delay at most)."""

_END_STATES = {
    BackendState.COMPLETED: JobStatus.COMPLETED,
    BackendState.FAILED: JobStatus.FAILED,
    BackendState.CANCELLED: JobStatus.CANCELLED,
}


class IllegalTransition(Exception):
    """A status change that :data:`TRANSITIONS` does not allow: a defect, never applied."""

    def __init__(self, job_id: str, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"job {job_id}: {current.value} → {target.value} is not a transition")
        self.job_id, self.current, self.target = job_id, current, target


@dataclass(frozen=True)
class Reserved:
    """A job's workers placed and their GPUs reserved (not yet durable): the hold and the
    decision record."""

    hold: Hold
    decision: Decision


@dataclass(frozen=True)
class Planned:
    """Where a job's workers would go now (a dry run): one placement per worker and the
    decision record; nothing reserved."""

    placements: tuple[Placement, ...]
    decision: Decision


def _gang_inputs(job: Job, gpu_model: str | None) -> dict[str, Any]:
    """A job's workers as the policy's inputs: one request per worker, placed as one gang
    (on GPUs of ``gpu_model`` when set, instead of the models the job named)."""
    request = job.config.resources.as_request()
    if gpu_model is not None:
        request["gpu_model"] = gpu_model
    return {"requests": [request] * job.workers}


class JobLifecycle:
    """Moves jobs through their states and holds their GPUs (see the module's docstring).

    Called by :class:`~apportion.jobs.service.JobService` (the API and the admission cycle)
    and run by the server (:meth:`reconcile` once at start, :meth:`watch` as a loop)."""

    def __init__(
        self,
        book: JobBook,
        allocations: AllocationService,
        holds: HoldManager,
        driver: BackendDriver,
        emit: EventSink,
        spawn: Spawn,
        wake: Callable[[], None],
        order: Callable[[Iterable[Job]], list[Job]],
    ) -> None:
        """``wake()`` asks for an admission cycle (called when a job ends); ``order(jobs)``
        gives the queued ones of ``jobs`` in the order they wait (their queue positions)."""
        self._book = book
        self._allocations = allocations
        self._holds = holds
        self._driver = driver
        self._emit = emit
        self._spawn = spawn
        self._wake = wake
        self._order = order
        self._in_flight: set[str] = set()  # jobs whose dispatch task is under way
        self._poll_locks: dict[str, asyncio.Lock] = {}  # one poll of a job at a time
        self._ended: dict[str, asyncio.Event] = {}  # jobs someone waits to see end
        self._remove_at_end: set[str] = set()  # deleted while still stopping
        self._polled_at: dict[str, float] = {}  # job id → its last poll (monotonic)
        self._watching = False  # watch() runs: adapters' words are acted on
        self.notified_poll_interval = NOTIFIED_POLL_INTERVAL
        self._numbered: list[Job] = []  # the jobs the last count gave a queue position
        self._renumbering: asyncio.Future[None] | None = None  # a count is due this turn
        self._arriving: dict[str, Job] = {}  # submitted, numbered before they are handed over

    # ---------------------------------------------------------------- the table
    @staticmethod
    def _check(job: Job, target: JobStatus) -> None:
        """Raise :class:`IllegalTransition` (logged) unless ``job`` may go to ``target``."""
        if target not in TRANSITIONS[job.status]:
            error = IllegalTransition(job.job_id, job.status, target)
            log.error("%s", error)
            raise error

    def _move(
        self, job: Job, target: JobStatus, reason: str, *, release_hold: str | None = None
    ) -> Awaitable[object]:
        """Change ``job``'s status along :data:`TRANSITIONS` and hand it over with its history
        entry (and the deletion of ``release_hold``'s rows), now; what to await for its commit.
        :class:`IllegalTransition` (logged, nothing handed over) otherwise."""
        self._check(job, target)
        return self._book.save(job, status=target, reason=reason, release_hold=release_hold)

    # ---------------------------------------------------------------- while it waits
    async def create(self, config: JobConfig, priority: int, owner: Owner) -> Job:
        """Commit a new job that waits to be submitted (``created``); return it."""
        return await self._book.create(
            config, priority, owner, "created; submit it to queue it", status=JobStatus.CREATED
        )

    async def submit_created(self, job: Job) -> None:
        """Queue a ``created`` job and announce ``job_queued``, committed together
        (:class:`Conflict` for a job in any other status)."""
        if job.status is not JobStatus.CREATED:
            raise Conflict(
                f"job {job.job_id} is {job.status.value}; only a created job can be submitted",
                details={"job_id": job.job_id, "status": job.status.value},
            )
        job.reason_code, job.reason = Reason.QUEUED, "waiting for the next admission cycle"
        change = self._move(job, JobStatus.QUEUED, "submitted")
        self._renumber_now()  # counted at once: the event, handed over with it, tells its position
        await self._announced(
            change, "job_queued", self._queued_payload(job), account=job.owner.account
        )
        crash_point("after_queued")  # the move and its event durable

    async def revise(self, job: Job, config: JobConfig, priority: int) -> None:
        """Replace a ``created`` job's config and priority (:class:`Conflict` for a job in any
        other status: what was queued is not changed under the queue)."""
        if job.status is not JobStatus.CREATED:
            raise Conflict(
                f"job {job.job_id} is {job.status.value}; only a created job can be changed",
                details={"job_id": job.job_id, "status": job.status.value},
            )
        job.config, job.priority, job.name, job.queue = config, priority, config.name, config.queue
        await self._book.save(job)

    async def submit(
        self,
        config: JobConfig,
        priority: int,
        owner: Owner,
        *,
        array: tuple[str, int] | None = None,
    ) -> Job:
        """Commit a new queued job (a task of ``array``: its id and the task's index) and
        announce ``job_queued``; return it."""
        job = self._book.new(config, priority, owner, array=array)
        self._arriving[job.job_id] = job
        try:
            self.renumber()
            await self.numbered()  # the event tells its position among the waiting jobs
        finally:
            del self._arriving[job.job_id]
        job.reason_code, job.reason = Reason.QUEUED, "waiting for the next admission cycle"
        await self._announced(
            self._book.enter(job, "submitted"),
            "job_queued",
            self._queued_payload(job),
            account=job.owner.account,
        )
        if job.queue_position is None:  # a count since its arrival passed it by
            self.renumber()
            await self.numbered()  # the answer shows its position
        return job

    async def _announced(
        self, change: Awaitable[object], type: str, payload: dict[str, Any], *, account: str
    ) -> None:
        """Await ``change`` (handed over by the caller) and the event ``type`` announcing it,
        handed over here, in the same turn: they are committed together, one fsync, and the
        event is never stored or heard of without the change (apportion.store.committer)."""
        await asyncio.gather(change, self._emit(type, payload, account=account))

    @staticmethod
    def _queued_payload(job: Job) -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "priority": job.priority,
            "queue_position": job.queue_position,
            "queue": job.queue,
            "name": job.name,
        }

    async def reprioritise(self, job: Job, priority: int) -> None:
        """Change a queued (or created) job's priority (:class:`Conflict` for any other
        status)."""
        if job.status not in (JobStatus.QUEUED, JobStatus.CREATED):
            raise Conflict(
                f"job {job.job_id} is {job.status.value}; only a waiting job's priority can change",
                details={"job_id": job.job_id, "status": job.status.value},
            )
        job.priority = priority
        await self._book.save(job)
        self.renumber()
        await self.numbered()  # the answer shows the job's new position

    async def wait(self, job: Job, blocked: Blocked) -> None:
        """Record why a queued job waits (written only when it changed)."""
        if (job.reason_code, job.reason) != (blocked.code, blocked.words):
            job.reason_code, job.reason = blocked.code, blocked.words
            await self._book.save(job)

    def count_bypasses(self, counts: Mapping[str, int]) -> list[Awaitable[object]]:
        """Set the bypass counts an admission decision grew (``{job id: count}``, from
        :meth:`CycleState.started <apportion.jobs.admission.CycleState.started>`); return
        the commits to await."""
        saves = []
        for job_id, count in counts.items():
            job = self._book.jobs.get(job_id)
            if job is not None:
                job.bypassed = count
                saves.append(self._book.save(job))
        return saves

    def estimate(self, starts: Mapping[str, float | None]) -> None:
        """Set each waiting job's estimated start (``{job id: start}``, of this cycle); a
        job that is not waiting has none."""
        for job in self._book.unfinished.values():
            job.estimated_start = starts.get(job.job_id) if job.status is JobStatus.QUEUED else None

    def renumber(self) -> None:
        """Have the queued jobs of each queue numbered again, 1-based, in waiting order: once,
        at the end of this turn of the event loop, for every change made in it (a burst of
        submits, or an array's thousand tasks, is counted once rather than once per job —
        each count orders every waiting job). :meth:`numbered` waits for it."""
        if self._renumbering is None:
            loop = asyncio.get_running_loop()
            self._renumbering = loop.create_future()
            loop.call_soon(self._renumber_now)

    async def numbered(self) -> None:
        """Return once the queue positions are counted again after the last change (at once
        when no count is due)."""
        if self._renumbering is not None:
            await asyncio.shield(self._renumbering)

    def _renumber_now(self) -> None:
        due, self._renumbering = self._renumbering, None
        for job in self._numbered:
            job.queue_position = None
        self._numbered = self._order([*self._book.unfinished.values(), *self._arriving.values()])
        position: dict[str, int] = {}
        for job in self._numbered:
            position[job.queue] = position.get(job.queue, 0) + 1
            job.queue_position = position[job.queue]
        if due is not None and not due.done():
            due.set_result(None)

    # ---------------------------------------------------------------- admission
    async def place(
        self, job: Job, policy_uri: str, candidates: list[str], gpu_model: str | None
    ) -> Reserved | Blocked:
        """Place the job's workers through ``policy_uri`` over ``candidates`` (on GPUs of
        ``gpu_model`` when set: the model its queue's quota counts them under) and reserve
        their GPUs (in memory; :meth:`admit` makes the hold durable), or say why it cannot
        start."""
        try:
            reserved = await self._allocations.reserve_for_job(
                policy_uri=policy_uri,
                candidates=candidates,
                inputs=_gang_inputs(job, gpu_model),
                parameters=job.config.parameters,
                owner=job.owner,
                job_id=job.job_id,
            )
        except ApportionError as exc:  # a broken policy, an unknown one…: the job waits
            return Blocked(exc.code.value, exc.message)
        if isinstance(reserved, Unplaceable):
            return Blocked(Reason.NO_RESOURCES, reserved.error().message)
        return Reserved(*reserved)

    async def plan(
        self, job: Job, policy_uri: str, candidates: list[str], gpu_model: str | None
    ) -> Planned | Blocked:
        """Where :meth:`place` would put the job's workers now, reserving nothing (a dry run;
        ``job`` need not be stored), or why it could not start."""
        try:
            planned = await self._allocations.plan_for_job(
                policy_uri=policy_uri,
                candidates=candidates,
                inputs=_gang_inputs(job, gpu_model),
                parameters=job.config.parameters,
            )
        except ApportionError as exc:
            return Blocked(exc.code.value, exc.message)
        if isinstance(planned, Unplaceable):
            return Blocked(Reason.NO_RESOURCES, planned.error().message)
        placed, decision = planned
        return Planned(placed.placements, decision)

    async def admit(self, job: Job, reserved: Reserved) -> None:
        """Make the hold durable, commit the job ``scheduled`` and start its dispatch — unless
        it was cancelled meanwhile (the hold is given back). A hold that cannot be recorded
        leaves the job queued, with the reason, for the next cycle."""
        hold = reserved.hold
        try:
            await self._allocations.commit_hold(hold)
        except Exception as exc:
            await self.wait(
                job, Blocked(Reason.QUEUED, f"its GPUs could not be recorded ({exc}); retrying")
            )
            return
        if job.status is not JobStatus.QUEUED:
            await self.abandon(hold)
            return
        target = self._driver.target(hold.placements)
        job.reason_code = job.reason = None
        job.decision = reserved.decision
        job.allocation = hold.placements
        job.allocation_id = hold.allocation_id
        job.adapter = target.adapter
        job.dispatch_token = uuid.uuid4().hex
        self._in_flight.add(job.job_id)  # from here a cancel leaves the end to the dispatch
        try:
            await self._move(
                job, JobStatus.SCHEDULED, f"placed on {target.cluster_id}: {target.nodes}"
            )
        except BaseException:
            self._in_flight.discard(job.job_id)
            raise
        self._launch(job)

    def _launch(self, job: Job) -> None:
        """Start the dispatch of a job committed ``scheduled`` (marked in flight)."""
        self._in_flight.add(job.job_id)
        if self._spawn(self._dispatch(job), f"dispatch-{job.job_id}") is None:
            self._in_flight.discard(job.job_id)  # the server stops: the next start's reconcile

    def unreserve(self, reserved: Reserved) -> None:
        """Give back at once the GPUs of a placement reserved in this cycle and not admitted
        (it would delay the job first in line)."""
        self._holds.unreserve(reserved.hold)

    async def abandon(self, hold: Hold) -> None:
        """Give back the GPUs of a placement whose job ended before it could start."""
        with contextlib.suppress(UnknownAllocation):
            await self._holds.release(hold.allocation_id)

    # ---------------------------------------------------------------- dispatch
    async def _dispatch(self, job: Job) -> None:
        """One job to its backend (a task of the server's group; ``_in_flight`` until done)."""
        try:
            if job.cancel_requested:
                await self.end(job, JobStatus.CANCELLED, reason="cancelled before dispatch")
                return
            outcome = await self._driver.submit(job)
            if isinstance(outcome, SubmitFailed):
                await self.end(job, JobStatus.FAILED, reason=outcome.reason)
                return
            await self._adopt(job, outcome.scheduler_job_id)
        finally:
            self._in_flight.discard(job.job_id)

    async def _adopt(self, job: Job, scheduler_job_id: str) -> None:
        job.scheduler_job_id = scheduler_job_id
        await self._announced(
            self._book.save(job),
            "job_scheduled",
            {
                "job_id": job.job_id,
                "scheduler_job_id": scheduler_job_id,
                "allocation": job.allocation_document(),
                "adapter": job.adapter,
                "queue": job.queue,
            },
            account=job.owner.account,
        )
        if job.cancel_requested or job.preempted_by is not None:
            await self._stop_dispatched(job)
        elif self._notifies(job):  # it may have started, or ended, before it was adopted
            self._spawn(self.poll(job), f"poll-{job.job_id}")

    async def reconcile(self) -> None:
        """At start: give back the GPUs of job holds whose job no longer holds them (it ended,
        or was deleted, or its admission was not recorded, before a crash let the release or
        the record be written); then adopt what reached the backend and dispatch again what
        did not."""
        for hold in self._holds.active():
            if hold.kind != "job":
                continue
            job = self._book.jobs.get(hold.request_id or "")
            if job is None or not job.status.active or job.allocation_id != hold.allocation_id:
                log.warning(
                    "releasing hold %s of job %s: the job %s; its release was cut short",
                    hold.allocation_id,
                    hold.request_id,
                    "is gone" if job is None else f"is {job.status.value}",
                )
                with contextlib.suppress(UnknownAllocation):
                    await self._holds.release(hold.allocation_id)
        for job in list(self._book.jobs.values()):
            if not job.status.active or job.scheduler_job_id is not None:
                continue
            try:
                found = await self._driver.find(job)
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
    def _notifies(self, job: Job) -> bool:
        """Whether the job's adapter says when the job changed (:class:`NotifyingAdapter`)."""
        return isinstance(self._driver.adapters.get(job.adapter or "local"), NotifyingAdapter)

    def _changed(self, run_id: str | None) -> None:
        """An adapter says the job run ``run_id`` may have changed (None: any of its jobs):
        poll it now (while :meth:`watch` runs)."""
        if not self._watching:
            return
        if run_id is None:
            jobs = [j for j in self._book.unfinished.values() if self._notifies(j)]
        else:
            job = self._book.jobs.get(run_id.partition(".")[0])  # a requeued run: "<id>.N"
            jobs = [] if job is None else [job]
        for job in jobs:
            if job.status.active and job.scheduler_job_id is not None:
                self._spawn(self.poll(job), f"poll-{job.job_id}")

    async def watch(self, *, interval: float = 0.5) -> None:
        """Poll every dispatched job until cancelled: a sweep every ``interval`` seconds, up to
        :data:`POLL_CONCURRENCY` jobs at once (one job's slow backend call or commit does not
        hold up the others, and their commits share fsyncs). A job whose adapter says when it
        changed is polled when it says so, and by the sweep only every
        :attr:`notified_poll_interval` seconds: a thousand running local jobs are not looked
        at four times a second each."""
        for adapter in self._driver.adapters.values():
            if isinstance(adapter, NotifyingAdapter):
                adapter.on_change(self._changed)
        self._watching = True
        try:
            await self._sweep(interval)
        finally:
            self._watching = False  # the server stops: what adapters say now is not acted on

    async def _sweep(self, interval: float) -> None:
        """:meth:`watch`'s loop: every ``interval`` seconds, poll the jobs that are due."""
        slots = asyncio.Semaphore(POLL_CONCURRENCY)

        async def poll_one(job: Job) -> None:
            async with slots:
                try:
                    await self.poll(job)
                except Exception:
                    log.exception("polling job %s failed", job.job_id)

        def due(job: Job, now: float) -> bool:
            if not job.status.active or job.scheduler_job_id is None:
                return False
            last = self._polled_at.get(job.job_id)
            stale = last is None or now - last >= self.notified_poll_interval
            return stale or not self._notifies(job)

        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            active = [job for job in self._book.unfinished.values() if due(job, now)]
            await asyncio.gather(*(poll_one(job) for job in active))

    async def poll(self, job: Job) -> None:
        """Bring one job's record up to date with its backend (one poll of a job at a time:
        the watch and a cancel never both record its start or end)."""
        lock = self._poll_locks.setdefault(job.job_id, asyncio.Lock())
        async with lock:
            if job.status.active:
                self._polled_at[job.job_id] = time.monotonic()
                await self._apply(job)

    async def _apply(self, job: Job) -> None:
        seen = await self._driver.poll(job)
        status = seen.status
        if seen.usage is not None:
            job.resource_usage = seen.usage
        if (
            status.state in (BackendState.RUNNING, *_END_STATES)
            and job.status is JobStatus.SCHEDULED
            and not status.never_started  # it could not start: scheduled → failed, no start
        ):
            await self._started(job, status)
        if status.state.finished and job.preempted_by is not None and not job.cancel_requested:
            await self._requeue(job, ended_at=status.ended_at)
        elif status.state.finished:
            reason = status.reason or status.state.value
            collected = await self._driver.collect_outputs(job)  # before the end is recorded
            await self.end(
                job,
                JobStatus.CANCELLED if job.cancel_requested else _END_STATES[status.state],
                reason=f"{reason}; {collected}" if collected else reason,
                return_code=status.return_code,
                exit_codes=status.exit_codes or None,
                ended_at=status.ended_at,
            )
        elif status.state is BackendState.UNKNOWN:
            await self.end(
                job, JobStatus.FAILED, reason="the scheduler has no record of the job anymore"
            )

    async def _started(self, job: Job, status: BackendStatus) -> None:
        started = status.started_at or time.time()
        if status.ended_at is not None:  # seen only once it ended: it started no later
            started = min(started, status.ended_at)
        job.start_time = started
        await self._announced(
            self._move(job, JobStatus.RUNNING, "started"),
            "job_started",
            {
                "job_id": job.job_id,
                "start_time": iso_utc(job.start_time),
                "resources": {
                    "allocation": job.allocation_document(),
                    "per_worker": job.config.resources.model_dump(exclude_none=True),
                    "workers": job.workers,
                },
            },
            account=job.owner.account,
        )

    # ---------------------------------------------------------------- ends
    async def cancel(self, job: Job) -> None:
        """Cancel a job: a queued one ends now; a dispatched one is stopped by its backend and
        ends at the poll that sees it; one being dispatched is ended by its dispatch (before
        or just after the backend took it). A finished job is left as it is."""
        if job.status.finished:
            return
        if job.status in (JobStatus.QUEUED, JobStatus.CREATED):
            await self.end(job, JobStatus.CANCELLED, reason=f"cancelled while {job.status.value}")
            return
        job.cancel_requested = True
        await self._book.save(job)
        if job.scheduler_job_id is not None:
            await self._stop_dispatched(job)
        elif job.job_id not in self._in_flight:
            await self.end(job, JobStatus.CANCELLED, reason="cancelled before dispatch")

    async def _stop_dispatched(self, job: Job) -> None:
        await self._driver.cancel(job)
        await self.poll(job)

    async def end(
        self,
        job: Job,
        status: JobStatus,
        *,
        reason: str,
        return_code: int | None = None,
        exit_codes: tuple[int | None, ...] | None = None,
        ended_at: float | None = None,
    ) -> None:
        """Record the end of a job, release its GPUs and announce ``job_completed``. A job
        that already ended is left as it is (an end is reported once, whoever sees it first).
        ``exit_codes``: each worker's, when its backend told them."""
        if job.status.finished:
            return
        assert status.finished, f"end() takes a final status, not {status.value}"
        self._check(job, status)
        job.end_time = ended_at or time.time()
        job.return_code = return_code
        job.exit_codes = exit_codes
        if status is JobStatus.FAILED:
            job.failed_reason = reason
        job.reason_code = job.reason = None
        # the end, the deletion of its hold's rows and job_completed: one transaction
        recorded = self._move(job, status, reason, release_hold=job.allocation_id)
        # free in memory before anyone hears of the end: what takes the GPUs now is
        # committed after the end (the database's committers write in order)
        self._release(job)
        self.renumber()
        await self._announced(
            recorded,
            "job_completed",
            {
                "job_id": job.job_id,
                "status": status.value,
                "queue": job.queue,
                "adapter": job.adapter,
                "end_time": iso_utc(job.end_time),
                "return_code": return_code,
                "reason": reason,
            },
            account=job.owner.account,
        )
        crash_point("after_end")  # the end, the release and the event durable
        ended = self._ended.pop(job.job_id, None)
        if ended is not None:
            ended.set()
        self._wake()
        if job.config.auto_clean:
            self._spawn(self._auto_clean(job), f"clean-{job.job_id}")
        if job.job_id in self._remove_at_end:
            self._spawn(self.remove(job), f"remove-{job.job_id}")

    async def clean(self, job: Job) -> str:
        """Remove an ended job's own working directory (:meth:`BackendDriver.clean`) and
        record it ``cleaned``; what was done, in words. :class:`Conflict` for a job that has
        not ended (its processes may still use the directory)."""
        if not job.status.finished:
            raise Conflict(
                f"job {job.job_id} is {job.status.value}: only an ended job is cleaned; cancel"
                " it first, or submit it with auto_clean",
                details={"job_id": job.job_id, "status": job.status.value},
            )
        try:
            words = await self._driver.clean(job)
        except OSError as exc:
            raise Conflict(
                f"the working directory of job {job.job_id} could not be removed: {exc}",
                details={"job_id": job.job_id},
            ) from None
        if not job.cleaned:
            job.cleaned = True
            await self._book.save(job)
        return words

    async def _auto_clean(self, job: Job) -> None:
        try:
            log.info("job %s (auto_clean): %s", job.job_id, await self.clean(job))
        except Conflict as exc:
            log.warning("job %s (auto_clean): %s", job.job_id, exc.message)

    # ---------------------------------------------------------------- preemption
    async def preempt(self, victim: Job, by: Job, why: str) -> None:
        """Stop ``victim`` to make room for ``by``: record who preempts it and why, announce
        ``job_preempted``, and have its backend stop it (SIGTERM and a grace period locally,
        ``scancel`` on Slurm) in the background. The poll that sees it stopped requeues it
        (:meth:`_requeue`). A job already being preempted, cancelled or ended is left as it
        is."""
        if not victim.status.active or victim.preempted_by is not None or victim.cancel_requested:
            return
        victim.preempted_by = by.job_id
        await self._book.save(victim)
        await self._emit(
            "job_preempted",
            {
                "job_id": victim.job_id,
                "queue": victim.queue,
                "preempted_by": by.job_id,
                "reason": why,
            },
            account=victim.owner.account,
        )
        if victim.scheduler_job_id is not None:
            self._spawn(self._stop_dispatched(victim), f"preempt-{victim.job_id}")
        # else its dispatch is under way: _adopt stops it once the backend has it

    async def _requeue(self, job: Job, *, ended_at: float | None) -> None:
        """A preempted job's backend stopped it: charge its run to its account, give back its
        GPUs and put it back in line (``queued``, one more run), all in one transaction."""
        self._check(job, JobStatus.QUEUED)
        ended = ended_at or time.time()
        charged = self._book.charge_run(job, ended)
        reason = (
            f"preempted by job {job.preempted_by}, which needed what it held (its job_preempted"
            " event says why); requeued"
        )
        hold = job.allocation_id
        job.allocation = job.allocation_id = job.adapter = job.decision = None
        job.dispatch_token = job.scheduler_job_id = None
        job.start_time = job.end_time = job.return_code = None
        job.resource_usage = None
        job.runs += 1
        job.preempted_by = None
        job.reason_code, job.reason = Reason.PREEMPTED, reason
        await self._book.save(
            job, status=JobStatus.QUEUED, reason=reason, release_hold=hold, charged=charged
        )
        self._forget_run(job.job_id, hold)  # in memory, once the store has it
        self.renumber()
        self._wake()

    def _release(self, job: Job) -> None:
        """Forget what an ended job held, in memory: its hold's rows went with its end."""
        self._forget_run(job.job_id, job.allocation_id)

    def _forget_run(self, job_id: str, hold: str | None) -> None:
        """Forget, in memory, a job's run that ended: its adapter view, its poll lock and time
        and the GPUs of its hold (whose rows went with the end)."""
        self._driver.forget(job_id)
        self._poll_locks.pop(job_id, None)
        self._polled_at.pop(job_id, None)
        if hold is not None:
            self._holds.forget_released(hold)

    async def until_ended(self, job: Job, *, within: float) -> bool:
        """Wait up to ``within`` seconds for ``job`` to end; whether it did."""
        if job.status.finished:
            return True
        ended = self._ended.setdefault(job.job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await ended.wait()
        return job.status.finished

    async def remove(self, job: Job) -> None:
        """Delete an ended job's record and history; one still stopping is deleted when its
        end is recorded (its GPUs are released then), and until then stays, as it is."""
        if not job.status.finished:
            self._remove_at_end.add(job.job_id)
            return
        await self._book.remove(job.job_id)
        self._ended.pop(job.job_id, None)
        self._remove_at_end.discard(job.job_id)
