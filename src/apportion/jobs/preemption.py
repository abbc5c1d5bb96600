"""Preemption: which running jobs a waiting job of higher priority stops to start now, and
the rules of who may preempt and who may be stopped — pure, shared by the server
(:mod:`apportion.jobs.preempter`) and the simulator (:mod:`apportion.sim.engine`).

Victims are chosen deterministically (the issue's rule, as Kueue and Slurm do it): only jobs of
the waiting job's queue whose own ``priority`` is strictly lower, that have run at least the
minimum run time, are not being stopped already, and are not waiting for their previous
preemptor to start; taken lowest priority first, then most recently started first (the least
work lost), then by id, until the waiting job fits on the GPUs free now plus theirs; then any
victim that is not needed after all is spared, the most valuable first (highest priority,
longest running).

Why it never loops, and how often a job can be preempted: a victim's priority is strictly
lower than its preemptor's, and preemption changes no priority, so no two jobs preempt each
other in turn. A victim waits until its preemptor has started, so the same job preempts it
again only after being preempted itself and waiting anew: a job ``v`` is preempted by a job
``h`` at most once per run of ``h``, and in all at most ``Σ runs(h)`` over the jobs ``h`` of
higher priority — finite, since the job of the highest priority runs once. (The simulator's
property test checks both over random workloads: tests/test_simulate.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from apportion.engine.capacity import gang_capacity
from apportion.engine.decisions import Placement
from apportion.jobs.backfill import NEVER, Gang, Timeline
from apportion.jobs.models import JobStatus
from apportion.jobs.priority import SchedulingConfig
from apportion.registry.fleet_structure import BOOL, I64

if TYPE_CHECKING:
    from apportion.jobs.records import Job


@dataclass(frozen=True)
class Candidate:
    """A running job that may be preempted: its id, own priority, start and GPU rows."""

    job_id: str
    priority: int
    started: float
    rows: I64


def choose_victims(
    timeline: Timeline, waiting: Gang, candidates: Sequence[Candidate]
) -> list[Candidate] | None:
    """The fewest ``candidates`` (already filtered by the rules above) whose GPUs, with those
    free now, let ``waiting`` start now, in the order they were taken; None when even all of
    them would not."""
    free = timeline.free_now()
    if _fits(timeline, waiting, free):
        return []  # nothing to stop: the GPUs are there (the policy said no for another reason)
    chosen: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.priority, -c.started, c.job_id)):
        chosen.append(candidate)
        free[candidate.rows] = True
        if _fits(timeline, waiting, free):
            break
    else:
        return None
    for candidate in reversed(list(chosen)):  # spare those not needed, the most valuable first
        trial = free.copy()
        trial[candidate.rows] = False
        if _fits(timeline, waiting, trial):
            chosen.remove(candidate)
            free = trial
    return chosen


class PreemptionRules:
    """Who may preempt and who may be stopped (the module's docstring), with what the rules
    remember between admission cycles: when each queue's jobs last preempted, and which job
    preempted each victim. ``jobs`` is every job the caller knows, by id."""

    def __init__(self, scheduling: SchedulingConfig) -> None:
        self._min_run = scheduling.preemption_min_run_seconds
        self._interval = scheduling.preemption_interval_seconds
        self._preempted_at: dict[str, float] = {}  # queue → when its jobs last preempted
        self._preempted_for: dict[str, str] = {}  # victim → its last preemptor

    def may_preempt(self, job: Job, queue: str, now: float, jobs: Mapping[str, Job]) -> bool:
        """Whether ``job`` may preempt now: ``queue`` has not preempted within
        ``preemption_interval_seconds``, and no earlier victim of ``job`` is still stopping."""
        if now - self._preempted_at.get(queue, -NEVER) < self._interval:
            return False
        return not any(j.preempted_by == job.job_id for j in jobs.values())

    def may_stop(self, other: Job, now: float, jobs: Mapping[str, Job]) -> bool:
        """Whether ``other`` may be preempted now: it runs, has run the minimum run time, is
        not being stopped already, and is not waiting for an earlier preemptor of its own to
        start (no job is preempted again before its preemptor ran)."""
        return (
            other.status is JobStatus.RUNNING
            and other.start_time is not None
            and now - other.start_time >= self._min_run
            and other.preempted_by is None
            and not other.cancel_requested
            and self.waiting_preemptor(other, jobs) is None
        )

    def priority_candidates(
        self,
        job: Job,
        now: float,
        jobs: Mapping[str, Job],
        rows: Callable[[Iterable[Placement]], Sequence[int]],
    ) -> list[Candidate]:
        """The running jobs ``job`` may stop for priority: those of its queue of strictly lower
        priority that :meth:`may_stop`, with their GPU rows (``rows(placements)``)."""
        return [
            Candidate(other.job_id, other.priority, other.start_time, rows_array(held))
            for other in jobs.values()
            if other.queue == job.queue
            and other.priority < job.priority
            and self.may_stop(other, now, jobs)
            and other.start_time is not None
            and len(held := rows(other.allocation or ())) > 0
        ]

    def reconsider_at(self, job: Job, queue: str, now: float, jobs: Mapping[str, Job]) -> float:
        """When a rule that keeps ``job`` from preempting now may let it (the end of ``queue``'s
        preemption interval, a job of lower priority reaching the minimum run time);
        :data:`~apportion.jobs.backfill.NEVER` when none will. The server's cycles come back
        by themselves; the simulator wakes up then."""
        times = [self._preempted_at.get(queue, -NEVER) + self._interval]
        times += [
            other.start_time + self._min_run
            for other in jobs.values()
            if other.queue == job.queue
            and other.priority < job.priority
            and other.status is JobStatus.RUNNING
            and other.start_time is not None
        ]
        return min((t for t in times if t > now), default=NEVER)

    def waiting_preemptor(self, job: Job, jobs: Mapping[str, Job]) -> Job | None:
        """The job that last preempted ``job``, while it has not started yet; once it has,
        ``job`` is forgotten as its victim."""
        preemptor = jobs.get(self._preempted_for.get(job.job_id, ""))
        if preemptor is not None and preemptor.status is JobStatus.QUEUED:
            return preemptor
        self._preempted_for.pop(job.job_id, None)
        return None

    def preempting(self, victims: Iterable[str], preemptor: str, queue: str, now: float) -> None:
        """Remember that ``preemptor`` (of ``queue``) stops ``victims`` at ``now``."""
        self._preempted_at[queue] = now
        for victim in victims:
            self._preempted_for[victim] = preemptor


def _fits(timeline: Timeline, gang: Gang, free: BOOL) -> bool:
    capacity = gang_capacity(timeline.structure, gang.candidates, gang.request, gang.workers, free)
    return capacity.workers >= gang.workers


def rows_array(rows: Sequence[int]) -> I64:
    """GPU rows as the array :class:`Candidate` keeps."""
    return np.asarray(rows, dtype=np.int64)
