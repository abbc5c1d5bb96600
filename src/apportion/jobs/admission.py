"""Admission: which queued jobs start now, and why the others wait.

Rules (CONTRACTS §6, seeds 000 and 001):

* Higher ``priority`` first (any integer; negative is lower than zero), FIFO within a priority.
* ``max_concurrent_jobs`` caps scheduled + running jobs across the pool.
* A queue's ``maximum_allowed_worker_instances`` counts every running worker of the queue;
  a job is admitted only when **all** its workers fit (all-or-nothing).
* A job that cannot start does not block smaller ones behind it (backfill) — until it has been
  bypassed ``max_bypass`` times (a queue setting, default 10). From then on no later job of its
  queue starts before it: starvation is bounded by ``max_bypass`` admissions.

:func:`plan_cycle` is pure bookkeeping over the job records; placing each candidate is the
caller's (it needs the policy and the fleet).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from apportion.jobs.models import JobStatus, QueueConfig
from apportion.jobs.records import Job


class Reason:
    """Codes of ``reason`` (why a job waits), each with words built where it is decided."""

    POOL_LIMIT = "PoolLimit"
    WORKER_CAP = "QueueWorkerCap"
    WAITS_BEHIND = "WaitsBehindStarvingJob"
    NO_RESOURCES = "NoFeasiblePlacement"
    POLICY_ERROR = "PolicyError"
    QUEUED = "Queued"


def waiting_order(jobs: Iterable[Job]) -> list[Job]:
    """Queued jobs in the order they are considered: priority desc, then submission (seq) asc."""
    return sorted(
        (j for j in jobs if j.status is JobStatus.QUEUED), key=lambda j: (-j.priority, j.seq)
    )


@dataclass
class CycleState:
    """What one admission cycle counts as it goes."""

    max_concurrent_jobs: int | None
    active_jobs: int
    workers_by_queue: dict[str, int]
    starving: dict[str, str] = field(default_factory=dict)  # queue → job id that must go first
    skipped: dict[str, list[Job]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, jobs: Iterable[Job], max_concurrent_jobs: int | None) -> CycleState:
        active = [j for j in jobs if j.status.active]
        workers: dict[str, int] = defaultdict(int)
        for job in active:
            workers[job.queue] += job.workers
        return cls(max_concurrent_jobs, len(active), workers)

    def blocker(self, job: Job, queue: QueueConfig) -> tuple[str, str] | None:
        """Why ``job`` cannot be tried now, as (code, words); ``None`` if it may be placed."""
        limit = self.max_concurrent_jobs
        if limit is not None and self.active_jobs >= limit:
            return (
                Reason.POOL_LIMIT,
                f"the pool runs {self.active_jobs} job(s) and max_concurrent_jobs is {limit}",
            )
        first = self.starving.get(job.queue)
        if first is not None and first != job.job_id:
            return (
                Reason.WAITS_BEHIND,
                f"queue {job.queue!r} holds back later jobs until job {first} starts "
                f"(it was passed over {queue.max_bypass} times)",
            )
        cap = queue.worker_cap
        used = self.workers_by_queue.get(job.queue, 0)
        if cap is not None and used + job.workers > cap:
            free = max(cap - used, 0)
            return (
                Reason.WORKER_CAP,
                f"needs {job.workers} worker instance(s), queue {job.queue!r} has {free} free "
                f"(cap {cap}, {used} running)",
            )
        return None

    def waited(self, job: Job) -> None:
        """``job`` stays queued this cycle; later starts in its queue pass it over."""
        self.skipped[job.queue].append(job)

    def started(self, job: Job, queue: QueueConfig) -> list[Job]:
        """Count ``job`` as started; return the jobs it passed over (their ``bypassed`` grew)."""
        self.active_jobs += 1
        self.workers_by_queue[job.queue] = self.workers_by_queue.get(job.queue, 0) + job.workers
        passed = list(self.skipped[job.queue])
        for earlier in passed:
            earlier.bypassed += 1
            if earlier.bypassed >= queue.max_bypass and job.queue not in self.starving:
                self.starving[job.queue] = earlier.job_id
        return passed

    def note_starving(self, jobs: Iterable[Job], queues: dict[str, QueueConfig]) -> None:
        """At the start of a cycle: a queued job already passed over ``max_bypass`` times goes first."""
        for job in jobs:
            queue = queues.get(job.queue)
            if queue is not None and job.bypassed >= queue.max_bypass:
                self.starving.setdefault(job.queue, job.job_id)
