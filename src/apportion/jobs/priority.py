"""The order of waiting jobs: a multifactor priority, as Slurm's ``priority/multifactor``.

A waiting job's priority is a weighted sum of factors, each between 0 and 1 except the job's
own priority, which is taken as it is (any integer; seed 001's):

    priority = w_job · job.priority
             + w_age · min(waited / max_age_seconds, 1)
             + w_fair_share · 2^(-U/S)           (its account's, jobs/fairshare.py)
             + w_job_size · GPUs / fleet GPUs     (1 − that with favor_small)
             + w_queue · queue.priority_factor / the largest of all queues

and jobs wait in descending priority, then in submission order. With the default weights (only
``w_job`` = 1) that is seed 001's order: priority first, first come first served within one.
The factors of each waiting job are shown by ``GET /priority`` (``apportion priority``, as
``sprio``); the weights are the server's ``[scheduling]`` settings (docs/scheduling.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from apportion.jobs.records import Job

WEEK = 7 * 86400.0


class PriorityWeights(BaseModel):
    """The weight of each priority factor (Slurm's ``PriorityWeight*``)."""

    model_config = ConfigDict(extra="forbid")

    job: float = Field(1.0, ge=0)  # the job's own priority, taken as it is
    age: float = Field(0.0, ge=0)
    fair_share: float = Field(0.0, ge=0)
    job_size: float = Field(0.0, ge=0)
    queue: float = Field(0.0, ge=0)


class SchedulingConfig(BaseModel):
    """How waiting jobs are ordered and usage is counted (the ``[scheduling]`` table of the
    server's config file; docs/scheduling.md)."""

    model_config = ConfigDict(extra="forbid")

    weights: PriorityWeights = Field(default_factory=PriorityWeights)
    fair_share_half_life_seconds: float = Field(WEEK, gt=0)  # Slurm's PriorityDecayHalfLife
    cpu_seconds_weight: float = Field(0.0, ge=0)  # a CPU-second's weight in fair-share usage
    max_age_seconds: float = Field(WEEK, gt=0)  # the wait at which the age factor reaches 1
    favor_small: bool = False  # the size factor favours small jobs (Slurm's PriorityFavorSmall)
    # start estimates are made again this often (and when a job joins the head of the line)
    estimate_interval_seconds: float = Field(5.0, ge=0)
    # admission cycles start at least this long apart: the submits of a burst are admitted
    # by one cycle, not one each (Slurm's sched_min_interval)
    cycle_min_interval_seconds: float = Field(0.05, ge=0, le=10)
    # preemption: a job runs this long before it may be preempted, and a queue's jobs
    # preempt at most once in this long
    preemption_min_run_seconds: float = Field(60.0, ge=0)
    preemption_interval_seconds: float = Field(10.0, ge=0)


@dataclass(frozen=True)
class PriorityFactors:
    """One waiting job's factors (each 0–1, but ``job``: its own priority), the weights they
    were taken with and their weighted sum, ``priority``."""

    job: int
    age: float
    fair_share: float
    job_size: float
    queue: float
    weights: PriorityWeights

    @property
    def weighted(self) -> dict[str, float]:
        """Each factor times its weight (what ``sprio`` shows)."""
        w = self.weights
        return {
            "job": w.job * self.job,
            "age": w.age * self.age,
            "fair_share": w.fair_share * self.fair_share,
            "job_size": w.job_size * self.job_size,
            "queue": w.queue * self.queue,
        }

    @property
    def priority(self) -> float:
        """The job's priority: its weighted factors' sum."""
        return sum(self.weighted.values())

    def public(self) -> dict[str, object]:
        """The factors as ``GET /priority`` shows them: the priority, the weighted factors
        and the factors themselves."""
        factors = {
            "job": self.job,
            "age": self.age,
            "fair_share": self.fair_share,
            "job_size": self.job_size,
            "queue": self.queue,
        }
        return {
            "priority": round(self.priority, 6),
            "weighted": {name: round(value, 6) for name, value in self.weighted.items()},
            "factors": {name: round(value, 6) for name, value in factors.items()},
        }


class Multifactor:
    """The priority of waiting jobs at one moment: the weights, the time, the fleet's size,
    each account's fair-share factor and each queue's priority factor."""

    def __init__(
        self,
        config: SchedulingConfig,
        *,
        now: float,
        fleet_gpus: int,
        fair_share: Mapping[str, float],
        queue_factors: Mapping[str, int],
    ) -> None:
        self._config = config
        self._now = now
        self._fleet_gpus = max(fleet_gpus, 1)
        self._fair_share = fair_share
        top = max(queue_factors.values(), default=0)
        self._queue = {name: (f / top if top > 0 else 0.0) for name, f in queue_factors.items()}

    def factors(self, job: Job) -> PriorityFactors:
        """``job``'s factors and priority (the module's docstring)."""
        config = self._config
        age = min(max(self._now - job.created_at, 0.0) / config.max_age_seconds, 1.0)
        fair = self._fair_share.get(job.owner.account, 1.0)
        size = min(job.config.resources.gpus * job.workers / self._fleet_gpus, 1.0)
        if config.favor_small:
            size = 1.0 - size
        queue = self._queue.get(job.queue, 0.0)
        return PriorityFactors(job.priority, age, fair, size, queue, config.weights)

    def priority(self, job: Job) -> float:
        """``job``'s priority (the weighted sum of its factors)."""
        return self.factors(job).priority

    def priorities(self, jobs: Sequence[Job]) -> npt.NDArray[np.float64]:
        """The priority of each of ``jobs``, as :meth:`priority` gives it, computed for all of
        them at once (a long line: the admission cycle and the simulator order thousands)."""
        config, weights = self._config, self._config.weights
        own = np.fromiter((j.priority for j in jobs), dtype=np.float64, count=len(jobs))
        total = weights.job * own
        if weights.age:
            created = np.fromiter((j.created_at for j in jobs), dtype=np.float64, count=len(jobs))
            total += weights.age * np.clip((self._now - created) / config.max_age_seconds, 0, 1)
        if weights.fair_share:
            fair = [self._fair_share.get(j.owner.account, 1.0) for j in jobs]
            total += weights.fair_share * np.asarray(fair, dtype=np.float64)
        if weights.job_size:
            gpus = [j.config.resources.gpus * j.workers for j in jobs]
            size = np.minimum(np.asarray(gpus, dtype=np.float64) / self._fleet_gpus, 1.0)
            total += weights.job_size * ((1.0 - size) if config.favor_small else size)
        if weights.queue:
            queue = [self._queue.get(j.queue, 0.0) for j in jobs]
            total += weights.queue * np.asarray(queue, dtype=np.float64)
        return total

    def order(self, waiting: Sequence[Job]) -> list[Job]:
        """``waiting`` in the order admission considers them: priority desc, then
        submission (seq) asc."""
        if not waiting:
            return []
        seqs = np.fromiter((j.seq for j in waiting), dtype=np.int64, count=len(waiting))
        ranked = np.lexsort((seqs, -self.priorities(waiting)))
        return [waiting[i] for i in ranked.tolist()]
