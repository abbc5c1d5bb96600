"""Preemption: which running jobs a waiting job of higher priority stops to start now — pure.

Victims are chosen deterministically (the issue's rule, as Kueue and Slurm do it): only jobs of
the waiting job's queue whose own ``priority`` is strictly lower, that have run at least the
minimum run time, are not being stopped already, and are not waiting for their previous
preemptor to start; taken lowest priority first, then most recently started first (the least
work lost), then by id, until the waiting job fits on the GPUs free now plus theirs; then any
victim that is not needed after all is spared, the most valuable first (highest priority,
longest running). Because a victim's priority is strictly lower than its preemptor's and
priorities do not change by preemption, no two jobs can preempt each other in turn: a job is
preempted at most once per job of higher priority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apportion.engine.capacity import gang_capacity
from apportion.jobs.backfill import Gang, Timeline
from apportion.registry.fleet_structure import BOOL, I64


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


def _fits(timeline: Timeline, gang: Gang, free: BOOL) -> bool:
    capacity = gang_capacity(timeline.structure, gang.candidates, gang.request, gang.workers, free)
    return capacity.workers >= gang.workers


def rows_array(rows: Sequence[int]) -> I64:
    """GPU rows as the array :class:`Candidate` keeps."""
    return np.asarray(rows, dtype=np.int64)
