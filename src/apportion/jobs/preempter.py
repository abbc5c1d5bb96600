"""Who stops whom, and when: the admission cycle's side of preemption (the rules of
:mod:`apportion.jobs.preemption`, which chooses the victims of a priority preemption).

:class:`Preempter` applies the rules of :class:`~apportion.jobs.preemption.PreemptionRules`
(which also remember, between cycles, when each queue last preempted and which job preempted
each victim) and asks
:meth:`JobLifecycle.preempt <apportion.jobs.lifecycle.JobLifecycle.preempt>` to stop the victims
(the lifecycle requeues them). Two ways to preempt (docs/scheduling.md, "Preemption"): a job of
a queue with ``preempt_lower_priority`` stops running jobs of strictly lower priority of its
queue; a job of a queue with ``reclaim_within_cohort`` stops the jobs of its cohort that borrow
the quota its queue lent. A victim waits until its preemptor has started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from apportion.engine.decisions import Placement
from apportion.jobs.admission import Blocked, Reason
from apportion.jobs.backfill import Gang, Timeline
from apportion.jobs.lifecycle import JobLifecycle
from apportion.jobs.models import QueueConfig
from apportion.jobs.preemption import PreemptionRules, choose_victims
from apportion.jobs.priority import SchedulingConfig
from apportion.jobs.quota import QuotaLedger, Usage, gpu_flavors, job_usage, quota_of
from apportion.jobs.records import Job, JobBook


class Preempter:
    """The service's preemptions (see the module's docstring)."""

    def __init__(
        self,
        book: JobBook,
        lifecycle: JobLifecycle,
        scheduling: SchedulingConfig,
        *,
        rows: Callable[[Iterable[Placement]], list[int]],
        held: Callable[[Iterable[Job]], dict[str, Usage]],
        queues: Callable[[], dict[str, QueueConfig]],
    ) -> None:
        """``rows(placements)``: their GPU rows in the fleet; ``held(jobs)``: what each holds
        of quota resources, by job id; ``queues()``: every queue, by name."""
        self._book = book
        self._lifecycle = lifecycle
        self._rows = rows
        self._held = held
        self._queues = queues
        self.rules = PreemptionRules(scheduling)  # what this process remembers

    async def for_priority(
        self, job: Job, queue: QueueConfig, timeline: Timeline, gang: Gang, blocked: Blocked
    ) -> Blocked:
        """Stop running jobs of strictly lower priority of ``job``'s queue so that it can
        start (the victims as :func:`~apportion.jobs.preemption.choose_victims` chooses them);
        return its reason, saying whom it stops."""
        now, jobs = timeline.now, self._book.jobs
        if not self.rules.may_preempt(job, queue.name, now, jobs):
            return blocked
        candidates = self.rules.priority_candidates(job, now, jobs, self._rows)
        victims = choose_victims(timeline, gang, candidates)
        if not victims:
            return blocked
        why = (
            f"job {job.job_id} of priority {job.priority} needs its GPUs, and queue"
            f" {queue.name!r} lets higher-priority jobs preempt"
        )
        names = await self._stop([jobs[v.job_id] for v in victims], job, queue, why)
        return Blocked(blocked.code, f"{blocked.words}; preempting lower-priority {names}")

    async def reclaim(
        self, job: Job, queue: QueueConfig, ledger: QuotaLedger, blocked: Blocked
    ) -> Blocked:
        """Take back quota ``job``'s queue lent: when the job fits in its queue's own nominal
        quota but its cohort lent that quota out, stop jobs of the borrowing queues, the most
        recently started first, until the quota lets it start (Kueue's
        ``reclaimWithinCohort``); return its reason, saying whom it stops."""
        now = time.time()
        if queue.cohort is None or not self.rules.may_preempt(
            job, queue.name, now, self._book.jobs
        ):
            return blocked
        queues = self._queues()
        for model in gpu_flavors(queue, job.config.resources):
            usage = job_usage(job.config.resources, job.workers, model)
            victims = self._borrowers_to_stop(queue, queues, ledger, usage, now)
            if victims:
                why = (
                    f"queue {queue.name!r} takes back the quota its cohort {queue.cohort!r}"
                    f" lent, for job {job.job_id}"
                )
                names = await self._stop(victims, job, queue, why)
                return Blocked(
                    blocked.code, f"{blocked.words}; taking back its lent quota from {names}"
                )
        return blocked

    def behind_preemptor(self, job: Job) -> Blocked | None:
        """Why a preempted job waits: the job that preempted it has not started yet (else it
        would take back the GPUs or quota it was stopped for, and the two would loop)."""
        preemptor = self.rules.waiting_preemptor(job, self._book.jobs)
        if preemptor is None:
            return None
        return Blocked(
            Reason.PREEMPTED,
            f"it was preempted by job {preemptor.job_id}, and waits until that job has started",
        )

    async def _stop(self, victims: list[Job], job: Job, queue: QueueConfig, why: str) -> str:
        """Have the lifecycle stop and requeue ``victims`` for ``job``, remembering who
        preempted each and when ``queue`` last preempted; the victims' ids, in words."""
        self.rules.preempting([v.job_id for v in victims], job.job_id, queue.name, time.time())
        for victim in victims:
            await self._lifecycle.preempt(victim, job, why)
        return f"job(s) {', '.join(v.job_id for v in victims)}"

    def _borrowers_to_stop(
        self,
        queue: QueueConfig,
        queues: Mapping[str, QueueConfig],
        ledger: QuotaLedger,
        usage: Usage,
        now: float,
    ) -> list[Job]:
        """The running jobs of other queues of ``queue``'s cohort that borrow what ``usage``
        needs, the most recently started first, whose end lets ``queue`` admit ``usage``
        within its own nominal quota; none when that would not fit its nominal, or even
        stopping them all would not do."""
        for resource, amount in usage.items():
            quota = quota_of(queue, resource)
            if quota is not None and ledger.used(queue.name, resource) + amount > quota.nominal:
                return []  # it would borrow itself: nothing to take back
        borrowing = [
            other
            for other in self._book.jobs.values()
            if other.queue != queue.name
            and (theirs := queues.get(other.queue)) is not None
            and theirs.cohort == queue.cohort
            and self.rules.may_stop(other, now, self._book.jobs)
            and any(
                (q := quota_of(theirs, r)) is not None and ledger.used(other.queue, r) > q.nominal
                for r in usage
            )
        ]
        borrowing.sort(key=lambda j: (-(j.start_time or 0.0), j.job_id))
        held = self._held(borrowing)
        trial = ledger.copy()
        chosen: list[Job] = []
        for other in borrowing:
            trial.charge(other.queue, {r: -n for r, n in held[other.job_id].items()})
            chosen.append(other)
            if trial.refusal(queue, usage) is None:
                return chosen
        return []
