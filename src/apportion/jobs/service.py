"""The job service: submit, cancel, re-prioritise, delete, limits — and the admission cycle.

Runs on the event loop. The REST routes call it; it has what users send checked
(:mod:`~apportion.jobs.acceptance`), decides admissions (:mod:`~apportion.jobs.admission`'s pure bookkeeping, one
cycle after another) and has :class:`~apportion.jobs.lifecycle.JobLifecycle` — the one writer
of job records and owner of their holds — carry out every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from apportion.allocation.hold import Hold
from apportion.allocation.holds import HoldManager
from apportion.allocation.service import AllocationService
from apportion.background import Spawn
from apportion.engine.decisions import Placement
from apportion.engine.requests import parse_request
from apportion.errors import ApportionError, InvalidRequest
from apportion.event_sink import EventSink
from apportion.jobs import dependencies
from apportion.jobs import views as job_views
from apportion.jobs.acceptance import Acceptance
from apportion.jobs.admission import Blocked, CycleState, Reason
from apportion.jobs.applications import ApplicationBook
from apportion.jobs.arrays import parse_array
from apportion.jobs.backfill import (
    ESTIMATED_JOBS,
    NEVER,
    Gang,
    Reservation,
    Timeline,
    estimate_starts,
)
from apportion.jobs.boundary import JobBoundary
from apportion.jobs.driver import BackendDriver
from apportion.jobs.fairshare import AccountShare, UsageBook, account_shares
from apportion.jobs.lifecycle import JobLifecycle, Planned, Reserved
from apportion.jobs.models import (
    JobConfig,
    JobStatus,
    PriorityRequest,
    QueueConfig,
    parse_model,
)
from apportion.jobs.plan import JobPlan
from apportion.jobs.pool_limits import PoolLimits
from apportion.jobs.preempter import Preempter
from apportion.jobs.priority import Multifactor, SchedulingConfig
from apportion.jobs.quota import (
    QuotaLedger,
    Usage,
    gpu_flavors,
    held_usage,
    job_usage,
)
from apportion.jobs.records import Job, JobBook, QueueBook
from apportion.ownership import Owner
from apportion.registry.service import Registry
from apportion.store.db import Database
from apportion.store.turns import Fence
from apportion.timefmt import iso_utc

log = logging.getLogger(__name__)

T = TypeVar("T")

DELETE_WAIT_SECONDS = 10.0  # how long DELETE /jobs/{id} waits for a cancelled job to end


class JobService:
    """Jobs and queues, from ``POST /jobs/submit`` to ``job_completed``."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        allocations: AllocationService,
        holds: HoldManager,
        driver: BackendDriver,
        emit: EventSink,
        spawn: Spawn,
        *,
        boundary: JobBoundary,
        scheduling: SchedulingConfig,
        shares: Callable[[], Mapping[str, int]],
        fence: Fence | None = None,
    ) -> None:
        """``scheduling``: the priority weights and the fair-share half-life; ``shares()``:
        every account's fair-share shares, by name; ``fence``: checked before each write of
        job records (the term of a leader: :mod:`apportion.jobs.duty`)."""
        self._registry = registry
        self._holds = holds
        self.driver = driver
        self._emit = emit
        self.scheduling = scheduling
        self._shares = shares
        self._estimated_at = -NEVER  # when start estimates were last made, and for which jobs
        self._estimated_ids: set[str] = set()
        usage = UsageBook(scheduling.fair_share_half_life_seconds)
        self.jobs = JobBook(
            db, usage=usage, fence=fence
        )  # read by the routes; written by the lifecycle only
        self.queues = QueueBook(db)
        self.applications = ApplicationBook(db)
        self.limits = PoolLimits(db)
        self._wake = asyncio.Event()
        self._spawn = spawn
        self.lifecycle = JobLifecycle(
            self.jobs, allocations, holds, driver, emit, spawn, wake=self.wake, order=self.waiting
        )
        self._acceptance = Acceptance(
            queues=self.queues,
            applications=self.applications,
            jobs=self.jobs,
            files=driver.files,
            boundary=boundary,
            fleet=registry.fleet,
            candidates=self._candidates,
        )
        self.preempter = Preempter(
            self.jobs,
            self.lifecycle,
            scheduling,
            rows=self._rows,
            held=self._held_usage,
            queues=self._queues,
        )

    async def load(self) -> None:
        """Read the stored files, the jobs, queues and limits (once, at start)."""
        await self.driver.files.load()
        await self.jobs.load()
        await self.queues.load()
        await self.applications.load()
        await self.limits.load()
        self.lifecycle.renumber()

    def wake(self) -> None:
        """Ask for an admission cycle soon (after a submit, an end, a limit change…)."""
        self._wake.set()

    # ---------------------------------------------------------------- API
    async def submit(self, body: Any, owner: Owner) -> Job:
        """``POST /jobs/submit``: validate the body against its queue and the server's job
        boundary (:class:`InvalidRequest` naming the field; :class:`Conflict` when this server
        runs no jobs), apply the queue's limits and ``env`` (the job's own variables win),
        commit the job queued, announce it and wake the cycle; return it."""
        config, priority, _ = self._acceptance.accept(body, owner)
        if config.array is None:
            job = await self.lifecycle.submit(config, priority, owner)
        else:
            job = (await self._submit_array(config, priority, owner))[0]
        self.wake()
        return job

    async def _submit_array(self, config: JobConfig, priority: int, owner: Owner) -> list[Job]:
        """Commit one queued task per index of ``config.array`` (jobs/arrays.py), committed
        together (one group commit); the tasks, by index."""
        spec = parse_array(config.array or "")
        array_job_id = uuid.uuid4().hex
        return list(
            await asyncio.gather(
                *(
                    self.lifecycle.submit(
                        config.model_copy(
                            update={"env": {**config.env, **spec.environment(array_job_id, i)}}
                        ),
                        priority,
                        owner,
                        array=(array_job_id, i),
                    )
                    for i in spec.indices
                )
            )
        )

    async def create(self, body: Any, owner: Owner) -> Job:
        """``POST /jobs``: the checks of :meth:`submit`, then commit the job ``created``: it
        waits for :meth:`submit_created` (seed 003's create, then submit); return it."""
        config, priority, _ = self._acceptance.accept(body, owner)
        if config.array is not None:
            raise InvalidRequest(
                "config.array: an array is submitted, not created and submitted later; use"
                " POST /jobs/submit",
                path="body.config.array",
            )
        return await self.lifecycle.create(config, priority, owner)

    async def revise(self, job: Job, body: Any) -> Job:
        """``PATCH /jobs/{id}``: a created job's new body, with :meth:`submit`'s checks
        (against the job's own account); :class:`Conflict` once it was submitted."""
        config, priority, _ = self._acceptance.accept(body, job.owner)
        await self.lifecycle.revise(job, config, priority)
        return job

    async def submit_created(self, job: Job) -> Job:
        """``POST /jobs/{id}/submit``: queue a created job (:class:`Conflict` otherwise) and
        wake the cycle; return it."""
        await self.lifecycle.submit_created(job)
        self.wake()
        return job

    async def plan(self, body: Any, owner: Owner) -> JobPlan:
        """``POST /jobs/plan`` (``submit --dry-run``): what :meth:`submit` of ``body`` would do
        now, nothing stored, reserved or announced. The same checks refuse what a submit would
        refuse; then the job is put in its place in the waiting order and decided as the next
        admission cycle would decide it, the jobs ahead of it being where they are (they waited
        at the last cycle) and the fleet as it is: where its workers would go, or why it would
        wait."""
        config, priority, queue = self._acceptance.accept(body, owner)
        draft = self.jobs.draft(config, priority, owner)
        unfinished = [*self.jobs.unfinished.values(), draft]
        waiting = self.waiting(unfinished)
        state = self._cycle_state(unfinished, waiting)
        ahead = waiting[: next(i for i, job in enumerate(waiting) if job is draft)]
        position = 1 + sum(1 for job in ahead if job.queue == draft.queue)
        queues = self._queues()
        timeline = self._timeline(time.time())
        decided: tuple[Planned, Usage] | Blocked
        depends = dependencies.state(draft, self.jobs.jobs)
        if isinstance(depends, dependencies.Never):
            words = f"it would be cancelled at once: {depends.words}"
            return JobPlan(config, priority, position, None, None, Reason.DEPENDENCY, words, None)
        if depends is not None:
            return JobPlan(
                config, priority, position, None, None, Reason.DEPENDENCY, depends.words, None
            )
        try:
            decided = await self._decide(draft, queue, state, self.lifecycle.plan)
        except Exception as exc:
            log.exception("plan: placing a draft of queue %s failed", queue.name)
            decided = _failed(exc)
        if not isinstance(decided, Blocked):  # it must not delay the first in line for GPUs
            head = next((j for j in ahead if j.reason_code == Reason.NO_RESOURCES), None)
            head_queue = None if head is None else queues.get(head.queue)
            if head is not None and head_queue is not None:
                reserved = _reservation(self._gang(head, head_queue), timeline)
                rows = self._rows(decided[0].placements)
                decided = _delayed(reserved, timeline, draft, rows) or decided
        if isinstance(decided, Blocked):
            gangs = self._gangs([*ahead, draft], queues)
            starts = await asyncio.to_thread(estimate_starts, timeline, gangs)
            start = starts.get(draft.job_id)
            return JobPlan(
                config, priority, position, None, None, decided.code, decided.words, start
            )
        planned, _ = decided
        target = self.driver.target(planned.placements)
        words = f"would start now on {target.cluster_id} ({target.adapter}): {target.nodes}"
        return JobPlan(
            config,
            priority,
            position,
            planned.placements,
            planned.decision,
            None,
            words,
            timeline.now,
        )

    async def cancel(self, job_id: str) -> Job:
        """``POST /jobs/{id}/cancel``: see :meth:`JobLifecycle.cancel`; return the job."""
        job = self.jobs.get(job_id)
        await self.lifecycle.cancel(job)
        return job

    async def clean(self, job_id: str) -> str:
        """``POST /jobs/{id}/clean``: see :meth:`JobLifecycle.clean`; what was done, in words."""
        return await self.lifecycle.clean(self.jobs.get(job_id))

    async def set_priority(self, job_id: str, body: Any) -> Job:
        """``POST /jobs/{id}/priority``: a queued job's new priority (409 otherwise)."""
        priority = parse_model(PriorityRequest, body).priority
        job = self.jobs.get(job_id)
        await self.lifecycle.reprioritise(job, priority)
        self.wake()
        return job

    async def delete(self, job_id: str) -> bool:
        """``DELETE /jobs/{id}``: cancel the job if it has not ended and wait (bounded) for its
        backend to confirm, then delete its record; whether it is deleted now. A job still
        stopping then (its grace period is longer) is deleted when its end is recorded: never
        a record gone while its processes run and its GPUs are held."""
        job = self.jobs.get(job_id)
        if not job.status.finished:
            await self.lifecycle.cancel(job)
            await self.lifecycle.until_ended(job, within=DELETE_WAIT_SECONDS)
        await self.lifecycle.remove(job)
        return job.status.finished

    async def set_limits(self, body: Any) -> dict[str, Any]:
        """``PUT /pool/limits``: validate and commit, announce ``limits_updated``, wake the
        cycle; return the new limits."""
        old, new = await self.limits.set(body)
        await self._emit("limits_updated", {"old_limits": old, "new_limits": new})
        self.wake()
        return new

    def select(
        self,
        *,
        status: str | None,
        queue: str | None,
        labels: Mapping[str, str],
        parent_job_id: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        """``GET /jobs``: see :func:`job_views.select_jobs`."""
        return job_views.select_jobs(
            self.jobs.jobs.values(),
            status=status,
            queue=queue,
            labels=labels,
            parent_job_id=parent_job_id,
            limit=limit,
            offset=offset,
        )

    def fair_shares(self) -> dict[str, AccountShare]:
        """Every account's shares, decayed usage and fair-share factor now (``GET /share``)."""
        running = (j for j in self.jobs.unfinished.values() if j.status is JobStatus.RUNNING)
        usage = self.jobs.usage.usage(time.time(), running)
        weight = self.scheduling.cpu_seconds_weight
        return account_shares(self._shares(), usage, cpu_seconds_weight=weight)

    def multifactor(self) -> Multifactor:
        """The priority of waiting jobs now (jobs/priority.py): the server's weights, each
        account's fair-share factor (computed only when it has weight), each queue's factor."""
        config = self.scheduling
        fair_share: dict[str, float] = {}
        if config.weights.fair_share > 0:
            fair_share = {name: line.fair_share for name, line in self.fair_shares().items()}
        fleet = self._registry.fleet
        with fleet.lock:
            fleet_gpus = fleet.structure.n_gpus
        return Multifactor(
            config,
            now=time.time(),
            fleet_gpus=fleet_gpus,
            fair_share=fair_share,
            queue_factors={name: q.priority_factor for name, q in self._queues().items()},
        )

    def waiting(self, jobs: Iterable[Job]) -> list[Job]:
        """The queued ones of ``jobs`` in the order admission considers them."""
        return self.multifactor().order([j for j in jobs if j.status is JobStatus.QUEUED])

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """``{queue: (queued, running)}`` for the Prometheus gauges."""
        return job_views.queue_counts(self.jobs.unfinished.values(), self.queues)

    def quota_used(self) -> dict[str, dict[str, Any] | None]:
        """Each queue's use of its quotas (None: it has none), as ``GET /queue`` shows it."""
        ledger = self._quota_ledger(list(self.jobs.unfinished.values()))
        return {name: ledger.status(queue) for name, queue in self._queues().items()}

    def statistics(self) -> dict[str, Any]:
        """``GET /queue`` (seed 001): totals, per queue and per priority."""
        unfinished = list(self.jobs.unfinished.values())
        quota = self._quota_ledger(unfinished)
        return job_views.statistics(unfinished, self.queues, self.limits.as_dict(), quota)

    def _quota_ledger(self, unfinished: list[Job]) -> QuotaLedger:
        """What the active ones of ``unfinished`` hold of their queues' quotas; nothing is
        counted when no queue has a quota (``GET /queue`` is polled)."""
        queues = self._queues()
        if all(queue.quota is None for queue in queues.values()):
            return QuotaLedger(queues)
        return self._cycle_state(unfinished, [], queues).quota

    # ---------------------------------------------------------------- admission
    async def run(self, *, interval: float = 1.0) -> None:
        """The admission loop: a cycle when woken, and at least every ``interval`` seconds;
        never two starting closer than ``cycle_min_interval_seconds`` (the wakes in between
        make one cycle).

        Each cycle runs as work of the server's task group: a stop cancels this loop between
        cycles or while it waits for one, and lets a cycle under way finish (its holds, records
        and dispatches are never cut in half)."""
        loop = asyncio.get_running_loop()
        last_start = -math.inf
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and this loop would then never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            early = last_start + self.scheduling.cycle_min_interval_seconds - loop.time()
            if early > 0:
                await asyncio.sleep(early)
            last_start = loop.time()
            self._wake.clear()
            cycle = self._spawn(self._logged_cycle(), "admission-cycle")
            if cycle is not None:
                await asyncio.wait([cycle])  # cancelling the loop here leaves the cycle be

    async def _logged_cycle(self) -> None:
        try:
            await self.cycle()
        except Exception:
            log.exception("admission cycle failed; retrying at the next one")

    async def cycle(self) -> list[Job]:
        """One admission pass over the queued jobs; return the jobs it started.

        1. snapshot: the waiting order, the queues, what runs; 2. decide, job after job in
        that order (each sees the GPUs the previous ones reserved): wait, or place and admit;
        3. make it durable: the holds, the ``scheduled`` records and the bypass counts of one
        cycle are committed together, awaited at the end.

        One job's failure stops only that job: an error while placing it (a queue filter that
        matches no document's shape, stored before filters were checked when a queue is
        written) leaves it waiting with the error as its reason, and the cycle goes on. Every
        reservation made is committed or given back, whatever happens after it: the commits
        are awaited even when the cycle ends by an exception."""
        unfinished = list(self.jobs.unfinished.values())
        waiting = self.waiting(unfinished)
        if not waiting:
            return []
        queues = self._queues()
        state = self._cycle_state(unfinished, waiting, queues)
        timeline = self._timeline(time.time())
        reservation: Reservation | None = None  # EASY's: the first job that waits for GPUs
        life = self.lifecycle
        array_active = Counter(
            j.array_job_id for j in unfinished if j.status.active and j.array_job_id
        )
        not_candidates: set[str] = set()  # waiting for others: no estimate of their own
        started: list[Job] = []
        durable: list[Awaitable[object]] = []
        try:
            for job in waiting:
                if job.status is not JobStatus.QUEUED:  # cancelled since the cycle began
                    continue
                queue = queues.get(job.queue)
                if queue is None:
                    await life.wait(
                        job, Blocked(Reason.NO_RESOURCES, f"queue {job.queue!r} was removed")
                    )
                    continue
                # not candidates: tasks beyond their array's limit, jobs waiting for others
                # (their reasons, written once, are committed with the cycle's other records)
                limited = _array_limited(job, array_active)
                if limited is not None:
                    not_candidates.add(job.job_id)
                    durable.append(life.wait(job, limited))
                    continue
                depends = dependencies.state(job, self.jobs.jobs)
                if isinstance(depends, dependencies.Never):
                    await life.end(job, JobStatus.CANCELLED, reason=depends.words)
                    continue
                if depends is not None:
                    not_candidates.add(job.job_id)
                    durable.append(life.wait(job, Blocked(Reason.DEPENDENCY, depends.words)))
                    continue
                decided: tuple[Reserved, Usage] | Blocked
                behind = self.preempter.behind_preemptor(job)
                if behind is not None:  # a victim never takes back what its preemptor needs
                    state.waited(job)
                    await life.wait(job, behind)
                    continue
                try:
                    decided = await self._decide(job, queue, state, life.place)
                except Exception as exc:
                    log.exception("admission: placing job %s failed", job.job_id)
                    decided = _failed(exc)
                if job.status.finished:  # cancelled while it was being placed
                    if not isinstance(decided, Blocked):
                        durable.append(life.abandon(decided[0].hold))
                    continue
                if isinstance(decided, Blocked):
                    gang = None
                    if decided.code == Reason.NO_RESOURCES and reservation is None:
                        gang = self._gang(job, queue)
                        reservation = _reservation(gang, timeline)
                    if reservation is not None and gang is not None:  # it is first in line
                        decided = Blocked(decided.code, f"{decided.words}; {FIRST_IN_LINE}")
                    if gang is not None and queue.preempt_lower_priority:
                        decided = await self.preempter.for_priority(
                            job, queue, timeline, gang, decided
                        )
                    elif decided.code == Reason.QUOTA and queue.reclaim_within_cohort:
                        decided = await self.preempter.reclaim(job, queue, state.quota, decided)
                    state.waited(job)
                    await life.wait(job, decided)
                    continue
                reserved, usage = decided
                rows = self._rows(reserved.hold.placements)
                delayed = _delayed(reservation, timeline, job, rows)
                if delayed is not None:
                    life.unreserve(reserved)
                    state.waited(job)
                    await life.wait(job, delayed)
                    continue
                timeline.occupy(rows, timeline.now + _length(job))
                durable.append(life.admit(job, reserved))
                if job.array_job_id is not None:
                    array_active[job.array_job_id] += 1
                durable.extend(life.count_bypasses(state.started(job, queue, usage)))
                started.append(job)
            admitted = {job.job_id for job in started}  # still queued until their commits
            left = [job for job in waiting if job.job_id not in admitted]
            await self._estimate(timeline, left, queues, skip=not_candidates)
        finally:
            for failure in await asyncio.gather(*durable, return_exceptions=True):
                if isinstance(failure, BaseException):
                    log.error("admission: recording a start failed: %r", failure)
            life.renumber()
        return started

    # ---------------------------------------------------------------- backfill
    def _timeline(self, now: float) -> Timeline:
        """The fleet's GPUs over time from ``now``: each hold's free at its expected end (a
        job's at its start plus its walltime, never without one; an allocation's at the end
        of its lease)."""
        fleet = self._registry.fleet
        with fleet.lock:
            structure = fleet.structure
            held = fleet.held.copy()
            releases = [
                (
                    [r for r in map(structure.gpu_row, hold.gpu_keys) if r is not None],
                    self._expected_end(hold, now),
                )
                for hold in self._holds.active()
            ]
        return Timeline.of(structure, now, held, releases)

    def _expected_end(self, hold: Hold, now: float) -> float:
        if hold.kind != "job":
            return hold.expires_at
        job = self.jobs.jobs.get(hold.request_id or "")
        if job is None or job.config.walltime is None:
            return NEVER
        return (job.start_time or now) + job.config.walltime

    def _rows(self, placements: Iterable[Placement]) -> list[int]:
        """The fleet's GPU rows of ``placements``."""
        fleet = self._registry.fleet
        with fleet.lock:
            structure = fleet.structure
            keys = (k for p in placements for k in p.gpu_keys)
            return [r for r in map(structure.gpu_row, keys) if r is not None]

    def _gang(self, job: Job, queue: QueueConfig) -> Gang | None:
        """What ``job`` needs, for the timeline (None when its queue's clusters cannot be
        found: a filter that fails)."""
        try:
            candidates = tuple(self._candidates(queue))
        except InvalidRequest:
            return None
        request = parse_request(job.config.resources.as_request(), path="config.resources")
        return Gang(job.job_id, candidates, request, job.workers, job.config.walltime)

    def _gangs(self, jobs: list[Job], queues: Mapping[str, QueueConfig]) -> list[Gang]:
        """What each of ``jobs`` still waiting needs, in order, for the timeline."""
        gangs = []
        for job in jobs:
            queue = queues.get(job.queue)
            gang = None if queue is None else self._gang(job, queue)
            if job.status is JobStatus.QUEUED and gang is not None:
                gangs.append(gang)
        return gangs

    async def _estimate(
        self,
        timeline: Timeline,
        waiting: list[Job],
        queues: Mapping[str, QueueConfig],
        *,
        skip: set[str],
    ) -> None:
        """Set the estimated start of the jobs still waiting (jobs/backfill.py) when a job
        joined the head of the line since the last estimates, or ``estimate_interval_seconds``
        passed; computed on a worker thread (a long line takes a fraction of a second). The
        jobs of ``skip`` wait for other jobs' ends, not for room: they get none; nor do the
        jobs this cycle is starting (leave them out of ``waiting``)."""
        still = [
            job for job in waiting if job.status is JobStatus.QUEUED and job.job_id not in skip
        ]
        ids = {job.job_id for job in still[:ESTIMATED_JOBS]}
        interval = self.scheduling.estimate_interval_seconds
        if not ids - self._estimated_ids and timeline.now - self._estimated_at < interval:
            return
        self._estimated_at, self._estimated_ids = timeline.now, ids
        gangs = self._gangs(still, queues)
        if not gangs:  # none waits for room: no thread hop, no timeline walked
            self.lifecycle.estimate({})
            return
        try:
            starts = await asyncio.to_thread(estimate_starts, timeline, gangs)
        except Exception:
            log.exception("admission: estimating start times failed")
            return
        self.lifecycle.estimate(starts)

    def _queues(self) -> dict[str, QueueConfig]:
        return {name: self.queues.get(name) for name in self.queues.names()}

    def _cycle_state(
        self, jobs: list[Job], waiting: list[Job], queues: dict[str, QueueConfig] | None = None
    ) -> CycleState:
        """The admission state over ``jobs`` (``waiting`` their queued ones in order): the
        active jobs counted, each of a queue with a quota holding its GPUs under their models
        as the fleet has them (what the others hold is charged to no quota)."""
        queues = self._queues() if queues is None else queues
        with_quota = {name for name, queue in queues.items() if queue.quota is not None}
        usage = self._held_usage(j for j in jobs if j.status.active and j.queue in with_quota)
        limit = self.limits.get("max_concurrent_jobs")
        return CycleState.of(jobs, waiting, limit, queues, held=lambda job: usage[job.job_id])

    def _held_usage(self, active: Iterable[Job]) -> dict[str, Usage]:
        """What each of the ``active`` jobs holds of quota resources, by job id: its GPUs under
        their models (looked up in the fleet), its vCPUs and memory as asked."""
        fleet = self._registry.fleet
        usage: dict[str, Usage] = {}
        with fleet.lock:
            structure = fleet.structure
            for job in active:
                models: list[str | None] = []
                for key in (k for p in job.allocation or () for k in p.gpu_keys):
                    row = structure.gpu_row(key)
                    model = None if row is None else structure.gpu_model_name(row)
                    models.append(model)
                usage[job.job_id] = held_usage(job.config.resources, job.workers, models)
        return usage

    async def _decide(
        self,
        job: Job,
        queue: QueueConfig,
        state: CycleState,
        place: Callable[[Job, str, list[str], str | None], Awaitable[T | Blocked]],
    ) -> tuple[T, Usage] | Blocked:
        """Why ``job`` waits this cycle, or its placement by ``place`` (reserved, or planned)
        and what it will hold of its queue's quotas. The GPU models of the queue's quota are
        tried in order (Kueue's flavors): the first with room in the quota where the policy
        places every worker wins. Raises what finding its clusters raised: see :meth:`cycle`."""
        blocked = state.blocker(job, queue)
        if blocked is not None:
            return blocked
        policy = job.config.policy_rule_uri or queue.policy_rule_uri
        candidates = self._candidates(queue)
        if not candidates and queue.plugin is not None:
            return Blocked(
                Reason.NO_RESOURCES,
                f"queue {queue.name!r} runs its jobs with the {queue.plugin} adapter (its"
                f" plugin) and none of its clusters has a {queue.plugin} scheduler",
            )
        resources = job.config.resources
        waits: list[tuple[str | None, Blocked]] = []
        for model in gpu_flavors(queue, resources):
            usage = job_usage(resources, job.workers, model)
            refusal = state.quota.refusal(queue, usage)
            if refusal is not None:
                waits.append((model, Blocked(Reason.QUOTA, refusal)))
                continue
            outcome = await place(job, policy, candidates, model)
            if not isinstance(outcome, Blocked):
                return outcome, usage
            waits.append((model, outcome))
        if not waits:
            models = ", ".join(queue.quota.gpus) if queue.quota is not None else ""
            return Blocked(
                Reason.QUOTA,
                f"queue {queue.name!r} has a quota of GPUs of models {models} only, and the job"
                " asks for none of them",
            )
        if len(waits) == 1:
            return waits[0][1]
        words = "; ".join(f"on {model}: {blocked.words}" for model, blocked in waits)
        return Blocked(waits[0][1].code, words)

    def _candidates(self, queue: QueueConfig) -> list[str]:
        """The clusters ``queue`` places on: its ``clusters`` (ids or a filter; all live ones
        if unset) whose scheduler is the queue's ``plugin``, when it names one
        (:class:`InvalidRequest` for a filter that cannot be evaluated)."""
        ids: list[str] | None
        if isinstance(queue.clusters, dict):
            ids = self._registry.filter_cluster_ids(
                queue.clusters, path=f"queue {queue.name}.clusters"
            )
        elif queue.clusters:
            ids = [c for c in queue.clusters if self._registry.has_cluster(c)]
        else:
            ids = None
        if ids is None:
            ids = self._registry.live_cluster_ids()
        if queue.plugin is None:
            return ids
        return [c for c in ids if self.driver.scheduler_type(c) == queue.plugin]


FIRST_IN_LINE = (
    "it is first in line for GPUs: later jobs may start before it only if they do not delay"
    " its estimated start"
)
"""What the reason of the job holding the cycle's reservation adds (EASY backfill)."""


def _reservation(gang: Gang | None, timeline: Timeline) -> Reservation | None:
    """EASY's reservation for the first job of a cycle that waits for GPUs: at its estimated
    start (none without one)."""
    fit = None if gang is None else timeline.earliest(gang)
    return None if gang is None or fit is None else Reservation(gang, fit.start)


def _length(job: Job) -> float:
    """How long ``job`` holds its GPUs, as far as is known: its walltime, or for ever."""
    return NEVER if job.config.walltime is None else job.config.walltime


def _delayed(
    reservation: Reservation | None, timeline: Timeline, job: Job, rows: Sequence[int]
) -> Blocked | None:
    """Why ``job``, placed on the GPU ``rows`` now, must wait for the reserved job (EASY
    backfill: it would still run at the reserved start and take GPUs that job needs)."""
    if reservation is None or not reservation.delays(timeline, job.config.walltime, rows):
        return None
    walltime = "no walltime" if job.config.walltime is None else "its walltime"
    return Blocked(
        Reason.RESERVED,
        f"it would delay job {reservation.gang.job_id}, first in line for GPUs, which is"
        f" estimated to start at {iso_utc(reservation.start)}: by {walltime} it would still"
        " run then, on GPUs that job needs",
    )


def _failed(exc: Exception) -> Blocked:
    """Why a job waits when placing it raised (its code, or ``Internal``)."""
    code = exc.code.value if isinstance(exc, ApportionError) else "Internal"
    return Blocked(code, f"it could not be placed: {_words(exc)}")


def _words(exc: Exception) -> str:
    """An error as a waiting job's reason: an :class:`ApportionError`'s message, else its
    type (the log has the traceback)."""
    if isinstance(exc, ApportionError):
        return exc.message
    return f"an internal error ({type(exc).__name__}); the server log has the details"


def _array_limited(job: Job, active: Mapping[str, int]) -> Blocked | None:
    """Why a task of an array waits for its siblings (its ``%K`` limit), or None."""
    if job.array_job_id is None or job.config.array is None:
        return None
    limit = parse_array(job.config.array).limit
    running = active.get(job.array_job_id, 0)
    if limit is None or running < limit:
        return None
    return Blocked(
        Reason.ARRAY_LIMIT,
        f"task {job.array_task_id} of array {job.array_job_id} waits: {limit} of its tasks"
        f" may be scheduled or running at once (%{limit}), and they are",
    )
