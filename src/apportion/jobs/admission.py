"""Admission: which queued jobs may be tried now, and why the others wait — pure decisions.

Rules (CONTRACTS §6, seeds 000 and 001):

* Higher priority first, FIFO within a priority: the job's own ``priority`` (any integer;
  negative is lower than zero), or the multifactor priority of :mod:`~apportion.jobs.priority`
  when the server's weights give other factors weight.
* ``max_concurrent_jobs`` caps scheduled + running jobs across the pool.
* A queue's ``maximum_allowed_worker_instances`` counts every running worker of the queue;
  a job is admitted only when **all** its workers fit (all-or-nothing).
* A queue's ``maximum_allowed_resources`` (GPUs, vCPUs, memory) caps the total its scheduled
  and running jobs hold, all workers of a job counted at once.
* A queue's ``quota`` (GPUs per model, vCPUs, memory), lent and borrowed within its
  ``cohort``: :mod:`~apportion.jobs.quota` keeps the books, and a job tries the GPU models of
  its queue's quota in order until one has room.
* A job that cannot start does not block smaller ones behind it (backfill) — until it has been
  bypassed ``max_bypass`` times (a queue setting, default 10). From then on no later job of its
  queue starts before it: starvation is bounded by ``max_bypass`` admissions.

Nothing here does I/O or changes a job record: :class:`CycleState` counts what one cycle has
started and returns the bypass counts that grew; the admission cycle
(:meth:`JobService.cycle <apportion.jobs.service.JobService.cycle>`) places each job that may be
tried and has :class:`~apportion.jobs.lifecycle.JobLifecycle` record the results.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from apportion.jobs.models import JobStatus, QueueConfig, worker_amounts
from apportion.jobs.quota import QuotaLedger, Usage
from apportion.jobs.records import Job


class Reason(StrEnum):
    """Codes of a waiting job's ``reason``, each with words built where it is decided. A failed
    placement other than "no room" is recorded under the error's own code (``UnknownPolicy``,
    ``PolicyError``, …)."""

    POOL_LIMIT = "PoolLimit"
    WORKER_CAP = "QueueWorkerCap"
    QUEUE_RESOURCES = "QueueResourceLimit"
    QUOTA = "QueueQuota"
    RESERVED = "WaitsForReservation"
    PREEMPTED = "Preempted"
    WAITS_BEHIND = "WaitsBehindStarvingJob"
    DEPENDENCY = "Dependency"
    ARRAY_LIMIT = "ArrayTaskLimit"
    NO_RESOURCES = "NoFeasiblePlacement"
    QUEUED = "Queued"


@dataclass(frozen=True)
class Blocked:
    """Why a job waits this cycle: a reason code and its words."""

    code: str
    words: str


def seed_priority(job: Job) -> float:
    """Seed 001's priority: the job's own (what the default multifactor weights give too)."""
    return job.priority


def waiting_order(
    jobs: Iterable[Job], priority: Callable[[Job], float] = seed_priority
) -> list[Job]:
    """Queued jobs in the order they are considered: ``priority`` desc (the multifactor
    priority of :mod:`~apportion.jobs.priority`; by default the job's own), then submission
    (seq) asc."""
    return sorted(
        (j for j in jobs if j.status is JobStatus.QUEUED), key=lambda j: (-priority(j), j.seq)
    )


def job_amounts(job: Job) -> dict[str, int]:
    """What all of ``job``'s workers hold together (GPUs, vCPUs, MiB of memory; unset ones
    left out)."""
    return {k: v * job.workers for k, v in worker_amounts(job.config.resources).items()}


@dataclass
class CycleState:
    """What one admission cycle counts as it goes (built by :meth:`of` at the start of a cycle,
    then told of every job that waits or starts, in waiting order)."""

    max_concurrent_jobs: int | None
    active_jobs: int
    workers_by_queue: dict[str, int]
    bypassed: dict[str, int]  # job id → times passed over, as this cycle has counted them
    quota: QuotaLedger  # what each queue uses of its quotas
    held_by_queue: dict[str, dict[str, int]] = field(default_factory=dict)  # GPUs, vCPUs, MiB
    starving: dict[str, str] = field(default_factory=dict)  # queue → job id that must go first
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(
        cls,
        jobs: Iterable[Job],
        waiting: Sequence[Job],
        max_concurrent_jobs: int | None,
        queues: Mapping[str, QueueConfig],
        *,
        held: Callable[[Job], Usage],
    ) -> CycleState:
        """The state at the start of a cycle over ``jobs``, whose queued ones are ``waiting``
        (in :func:`waiting_order`): the active jobs and their workers and, per queue, the first
        waiting job already passed over ``max_bypass`` times — it goes first; and what each
        queue's active jobs hold: of its ``maximum_allowed_resources`` when it sets some, of
        its quota (``held(job)``: GPUs by model) when it has one."""
        state = cls(
            max_concurrent_jobs,
            0,
            defaultdict(int),
            {j.job_id: j.bypassed for j in waiting},
            QuotaLedger(queues),
        )
        limited = {n for n, q in queues.items() if q.maximum_allowed_resources.amounts()}
        with_quota = {name for name, queue in queues.items() if queue.quota is not None}
        for job in jobs:
            if job.status.active:
                state.active_jobs += 1
                state.workers_by_queue[job.queue] += job.workers
                if job.queue in limited:
                    state._hold(job)
                if job.queue in with_quota:
                    state.quota.charge(job.queue, held(job))
        for job in waiting:
            queue = queues.get(job.queue)
            if queue is not None and job.bypassed >= queue.max_bypass:
                state.starving.setdefault(job.queue, job.job_id)
        return state

    def blocker(self, job: Job, queue: QueueConfig) -> Blocked | None:
        """Why ``job`` cannot be tried now; ``None`` if it may be placed."""
        limit = self.max_concurrent_jobs
        if limit is not None and self.active_jobs >= limit:
            return Blocked(
                Reason.POOL_LIMIT,
                f"the pool runs {self.active_jobs} job(s) and max_concurrent_jobs is {limit}",
            )
        first = self.starving.get(job.queue)
        if first is not None and first != job.job_id:
            return Blocked(
                Reason.WAITS_BEHIND,
                f"queue {job.queue!r} holds back later jobs until job {first} starts "
                f"(it was passed over {queue.max_bypass} times)",
            )
        cap = queue.worker_cap
        used = self.workers_by_queue.get(job.queue, 0)
        if cap is not None and used + job.workers > cap:
            free = max(cap - used, 0)
            return Blocked(
                Reason.WORKER_CAP,
                f"needs {job.workers} worker instance(s), queue {job.queue!r} has {free} free "
                f"(cap {cap}, {used} running)",
            )
        held, asked = self.held_by_queue.get(job.queue, {}), job_amounts(job)
        for name, total in queue.maximum_allowed_resources.amounts().items():
            asks = asked.get(name, 0)
            if held.get(name, 0) + asks > total:
                free = max(total - held.get(name, 0), 0)
                return Blocked(
                    Reason.QUEUE_RESOURCES,
                    f"needs {asks} {name}, queue {job.queue!r} has {free} free of its "
                    f"maximum_allowed_resources.{name} {total} ({held.get(name, 0)} held)",
                )
        return None

    def _hold(self, job: Job) -> None:
        held = self.held_by_queue.setdefault(job.queue, defaultdict(int))
        for name, amount in job_amounts(job).items():
            held[name] += amount

    def waited(self, job: Job) -> None:
        """``job`` stays queued this cycle; later starts in its queue pass it over."""
        self.skipped[job.queue].append(job.job_id)

    def started(self, job: Job, queue: QueueConfig, usage: Usage) -> dict[str, int]:
        """Count ``job`` as started, holding ``usage`` of its queue's quotas; return the new
        bypass counts of the jobs it passed over (``{job id: count}``, for the caller to
        record). The first of them to reach ``max_bypass`` holds back the rest of its queue
        from then on."""
        self.active_jobs += 1
        self.workers_by_queue[job.queue] = self.workers_by_queue.get(job.queue, 0) + job.workers
        self._hold(job)
        self.quota.charge(job.queue, usage)
        grown: dict[str, int] = {}
        for earlier in self.skipped[job.queue]:
            count = self.bypassed.get(earlier, 0) + 1
            self.bypassed[earlier] = grown[earlier] = count
            if count >= queue.max_bypass and job.queue not in self.starving:
                self.starving[job.queue] = earlier
        return grown
