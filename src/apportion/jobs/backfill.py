"""Backfill with walltimes (EASY, as Slurm's ``sched/backfill``) and start-time estimates —
pure bookkeeping over the fleet's structure.

A :class:`Timeline` knows when each GPU that is held now becomes free — a job's at its start
plus its walltime (never, without one), an allocation's at its lease's end — and the jobs
booked on it for later (estimates), each holding its GPUs from its estimated start to that
start plus its walltime. :meth:`Timeline.earliest` finds the first moment a gang fits in GPUs
that stay free for its whole walltime; the GPUs it would take are chosen as
:func:`~apportion.engine.capacity.gang_rows` does (a deterministic stand-in for its policy).

EASY backfill: in each admission cycle the first job that cannot be placed for want of GPUs
gets a :class:`Reservation` at its estimated start. A later job may start before it only if,
by its walltime, it ends before the reservation, or if the reserved job would still fit at its
reserved time with the later job's GPUs taken. Estimates count GPUs, vCPUs and memory of the
nodes, not queue limits or quotas: a job held back by one of those may start later than its
estimate says.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from apportion.engine.capacity import gang_capacity, gang_rows
from apportion.engine.requests import GpuRequest
from apportion.registry.fleet_structure import BOOL, I64, Structure

NEVER = math.inf
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Gang:
    """What a job needs, for the timeline: its workers, each asking ``request``, in one of
    ``candidates``, for ``walltime`` seconds (None: no end is known)."""

    job_id: str
    candidates: tuple[str, ...]
    request: GpuRequest
    workers: int
    walltime: float | None

    @property
    def length(self) -> float:
        return NEVER if self.walltime is None else self.walltime


@dataclass(frozen=True)
class Fit:
    """Where and when a gang fits: its start and the GPU rows it would take."""

    start: float
    rows: I64


class Timeline:
    """The fleet's GPUs over time, from ``now`` (see the module's docstring)."""

    def __init__(self, s: Structure, busy_until: F64, now: float) -> None:
        self._s = s
        self._busy_until = busy_until  # per GPU row: when it is free (≤ now: free now)
        # the booked gangs, one entry per GPU row they hold: the row, from, until
        self._booked_rows: I64 = np.zeros(0, dtype=np.int64)
        self._booked_from: F64 = np.zeros(0, dtype=np.float64)
        self._booked_until: F64 = np.zeros(0, dtype=np.float64)
        self.now = now

    @classmethod
    def of(
        cls, s: Structure, now: float, held: BOOL, releases: Iterable[tuple[Sequence[int], float]]
    ) -> Timeline:
        """The timeline of a fleet whose ``held`` GPUs are freed by ``releases`` — (GPU rows,
        when) — and never when no release names them. A release already due (a job past its
        walltime, about to be stopped) frees its GPUs now."""
        busy = np.where(held, NEVER, now).astype(np.float64)
        for rows, end in releases:
            if len(rows):
                busy[np.asarray(rows, dtype=np.int64)] = max(end, now)
        return cls(s, busy, now)

    @property
    def structure(self) -> Structure:
        """The fleet's structure the timeline is over."""
        return self._s

    def free_now(self) -> BOOL:
        """Per GPU row: free now (a new array)."""
        free: BOOL = self._busy_until <= self.now
        return free

    def copy(self) -> Timeline:
        """An independent copy (to book estimates on)."""
        twin = Timeline(self._s, self._busy_until.copy(), self.now)
        twin._booked_rows = self._booked_rows
        twin._booked_from = self._booked_from
        twin._booked_until = self._booked_until
        return twin

    def occupy(self, rows: Sequence[int] | I64, until: float) -> None:
        """GPUs taken now (a job started in this cycle) until ``until``."""
        if len(rows):
            self._busy_until[np.asarray(rows, dtype=np.int64)] = until

    def book(self, fit: Fit, length: float) -> None:
        """A gang estimated to start at ``fit.start`` holds ``fit.rows`` for ``length``."""
        count = fit.rows.size
        self._booked_rows = np.concatenate([self._booked_rows, fit.rows])
        self._booked_from = np.concatenate([self._booked_from, np.full(count, fit.start)])
        self._booked_until = np.concatenate(
            [self._booked_until, np.full(count, fit.start + length)]
        )

    def free_during(self, start: float, end: float) -> BOOL:
        """Per GPU row: free for the whole of [start, end)."""
        free: BOOL = self._busy_until <= start
        overlapping = (self._booked_from < end) & (self._booked_until > start)
        free[self._booked_rows[overlapping]] = False
        return free

    def _moments(self) -> list[float]:
        """Now and every later moment at which GPUs become free, in order."""
        ends = np.concatenate([self._busy_until, self._booked_until])
        return sorted({self.now, *ends[(ends > self.now) & np.isfinite(ends)].tolist()})

    def earliest(self, gang: Gang) -> Fit | None:
        """The first moment from now at which ``gang`` fits in GPUs free for its whole
        walltime, and the GPUs it would take; None when it never does (the GPUs it needs are
        held by jobs without a walltime, or it is larger than its clusters)."""
        moments = self._moments()
        # before the first moment at which it fits among the GPUs then free, bookings aside,
        # it cannot fit (that fit only grows with time): skip those moments by bisection
        first = bisect.bisect_left(
            range(len(moments)),
            True,
            key=lambda i: self._fits_unbooked(gang, moments[i]),
        )
        for moment in moments[first:]:
            free = self.free_during(moment, moment + gang.length)
            rows = gang_rows(self._s, gang.candidates, gang.request, gang.workers, free)
            if rows is not None:
                return Fit(moment, rows)
        return None

    def _fits_unbooked(self, gang: Gang, moment: float) -> bool:
        """Whether ``gang`` fits among the GPUs free at ``moment``, bookings not counted."""
        free = self._busy_until <= moment
        capacity = gang_capacity(self._s, gang.candidates, gang.request, gang.workers, free)
        return capacity.workers >= gang.workers

    def fits_at(self, gang: Gang, moment: float, taken: Sequence[int] | I64) -> bool:
        """Whether ``gang`` still fits at ``moment`` (for its whole walltime) with the GPUs
        ``taken`` held then too."""
        free = self.free_during(moment, moment + gang.length)
        if len(taken):
            free[np.asarray(taken, dtype=np.int64)] = False
        capacity = gang_capacity(self._s, gang.candidates, gang.request, gang.workers, free)
        return capacity.workers >= gang.workers


@dataclass(frozen=True)
class Reservation:
    """EASY's one reservation: the first job that waits for GPUs, at its estimated start."""

    gang: Gang
    start: float

    def delays(self, timeline: Timeline, walltime: float | None, taken: Sequence[int]) -> bool:
        """Whether a job starting now on the GPUs ``taken``, for ``walltime`` seconds, would
        delay the reserved job: it would still run at the reserved start, and hold GPUs the
        reserved job then needs."""
        if walltime is not None and timeline.now + walltime <= self.start:
            return False  # it ends before the reservation begins
        return not timeline.fits_at(self.gang, self.start, taken)


ESTIMATED_JOBS = 200
"""How many waiting jobs, in their order, get a start estimate in each cycle (the rest: none,
until they come closer to the head of the line)."""


def estimate_starts(timeline: Timeline, waiting: Sequence[Gang]) -> dict[str, float | None]:
    """Each waiting gang's estimated start, in the order given: the first moment it fits
    after those before it were booked (None: never, as the timeline knows it, or beyond the
    first :data:`ESTIMATED_JOBS`). ``timeline`` is left as it was."""
    sim = timeline.copy()
    out: dict[str, float | None] = {}
    for index, gang in enumerate(waiting):
        fit = sim.earliest(gang) if index < ESTIMATED_JOBS else None
        out[gang.job_id] = None if fit is None else fit.start
        if fit is not None:
            sim.book(fit, gang.length)
    return out
