"""The pure admission decisions (jobs/admission.py): order, blockers, bypass counts, starvation.

Table tests build job records in memory (no server, no store); the hypothesis property runs many
admission cycles over a small fleet and checks the starvation bound of docs/jobs.md: no waiting
job is passed over by a later job of its queue more than ``max_bypass`` times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.jobs.admission import Blocked, CycleState, Reason, waiting_order
from apportion.jobs.models import JobStatus, QueueConfig
from apportion.jobs.quota import Usage, job_usage
from apportion.jobs.records import Job
from tests.jobs_helpers import queue_config, record

RUNNING, SCHEDULED, QUEUED = JobStatus.RUNNING, JobStatus.SCHEDULED, JobStatus.QUEUED


def state_of(jobs: list[Job], limit: int | None = None, **queues: QueueConfig) -> CycleState:
    return CycleState.of(
        jobs, waiting_order(jobs), limit, queues or {"q": queue_config()}, held=asked
    )


def asked(job: Job) -> Usage:
    """What a job holds of quota resources here: what it asked for, its GPUs of no model."""
    return job_usage(job.config.resources, job.workers, None)


# ---------------------------------------------------------------------------- order

ORDER = [
    # (priority, seq) of each queued job → the seqs in the order they are considered
    ([(0, 1), (5, 2), (0, 3), (-1, 4)], [2, 1, 3, 4]),  # 5 > 0 = 0 > -1; the two 0s by seq
    ([(0, 3), (0, 1), (0, 2)], [1, 2, 3]),  # one priority: FIFO by submission
    ([(-5, 1), (-2, 2)], [2, 1]),  # negative priorities: -2 > -5
]


@pytest.mark.parametrize(("jobs", "order"), ORDER)
def test_waiting_order(jobs: list[tuple[int, int]], order: list[int]) -> None:
    records = [record(seq, priority=priority) for priority, seq in jobs]
    assert [j.seq for j in waiting_order(records)] == order


def test_only_queued_jobs_wait() -> None:
    records = [record(1, status=RUNNING), record(2), record(3, status=JobStatus.COMPLETED)]
    assert [j.seq for j in waiting_order(records)] == [2]


# ---------------------------------------------------------------------------- blockers


@dataclass
class Row:
    comment: str
    active: list[Job]  # scheduled or running jobs at the start of the cycle
    job: Job
    queue: QueueConfig = field(default_factory=queue_config)
    limit: int | None = None
    expected: Blocked | None = None


BLOCKERS = [
    Row(
        "2 active, max_concurrent_jobs 2: 2 >= 2",
        [record(1, status=RUNNING), record(2, status=SCHEDULED)],
        record(3),
        limit=2,
        expected=Blocked(Reason.POOL_LIMIT, "the pool runs 2 job(s) and max_concurrent_jobs is 2"),
    ),
    Row(
        "1 active, max_concurrent_jobs 2: 1 < 2",
        [record(1, status=RUNNING)],
        record(3),
        limit=2,
    ),
    Row(
        "cap 10, 7 workers run, 4 asked: 7 + 4 = 11 > 10, 10 - 7 = 3 free",
        [record(1, status=RUNNING, workers=7)],
        record(2, workers=4),
        queue_config(cap=10),
        expected=Blocked(
            Reason.WORKER_CAP,
            "needs 4 worker instance(s), queue 'q' has 3 free (cap 10, 7 running)",
        ),
    ),
    Row(
        "cap 10, 7 workers run, 3 asked: 7 + 3 = 10 <= 10",
        [record(1, status=RUNNING, workers=7)],
        record(2, workers=3),
        queue_config(cap=10),
    ),
    Row(
        "cap 10 (seed 000): 10 workers run, 8 asked: 10 + 8 = 18 > 10, 0 free",
        [record(1, status=RUNNING, workers=10)],
        record(2, workers=8),
        queue_config(cap=10),
        expected=Blocked(
            Reason.WORKER_CAP,
            "needs 8 worker instance(s), queue 'q' has 0 free (cap 10, 10 running)",
        ),
    ),
    Row(
        "cap lowered to 4 below the 6 running: max(4 - 6, 0) = 0 free",
        [record(1, status=RUNNING, workers=6)],
        record(2, workers=1),
        queue_config(cap=4),
        expected=Blocked(
            Reason.WORKER_CAP,
            "needs 1 worker instance(s), queue 'q' has 0 free (cap 4, 6 running)",
        ),
    ),
    Row(
        "scheduled workers count too: 2 scheduled + 2 running + 1 asked = 5 > 4",
        [record(1, status=SCHEDULED, workers=2), record(2, status=RUNNING, workers=2)],
        record(3, workers=1),
        queue_config(cap=4),
        expected=Blocked(
            Reason.WORKER_CAP,
            "needs 1 worker instance(s), queue 'q' has 0 free (cap 4, 4 running)",
        ),
    ),
    Row(
        "unlimited (-1): 100 workers run, 50 asked",
        [record(1, status=RUNNING, workers=100)],
        record(2, workers=50),
    ),
    Row(
        "another queue's workers do not count: 10 in 'other', cap 10 in 'q', 10 asked",
        [record(1, queue="other", status=RUNNING, workers=10)],
        record(2, workers=10),
        queue_config(cap=10),
    ),
    Row(
        "maximum_allowed_resources gpus 3 (issue 10: 2 × 2 GPUs ran at once): 2 held + 2 > 3",
        [record(1, status=RUNNING, gpus=2)],
        record(2, gpus=2),
        queue_config(maximum_allowed_resources={"gpus": 3}),
        expected=Blocked(
            Reason.QUEUE_RESOURCES,
            "needs 2 gpus, queue 'q' has 1 free of its maximum_allowed_resources.gpus 3 (2 held)",
        ),
    ),
    Row(
        "a gang counts every worker at once: 0 held + 2 workers × 2 GPUs = 4 > 3",
        [],
        record(2, workers=2, gpus=2),
        queue_config(maximum_allowed_resources={"gpus": 3}),
        expected=Blocked(
            Reason.QUEUE_RESOURCES,
            "needs 4 gpus, queue 'q' has 3 free of its maximum_allowed_resources.gpus 3 (0 held)",
        ),
    ),
    Row(
        "scheduled jobs hold too, other queues' do not: 1 + 2 = 3 <= 3",
        [record(1, status=SCHEDULED, gpus=1), record(3, queue="other", status=RUNNING, gpus=8)],
        record(2, gpus=2),
        queue_config(maximum_allowed_resources={"gpus": 3}),
    ),
    Row(
        "the pool limit is checked before the cap: 1 >= 1 although 1 + 1 > 1 too",
        [record(1, status=RUNNING, workers=1)],
        record(2, workers=1),
        queue_config(cap=1),
        limit=1,
        expected=Blocked(Reason.POOL_LIMIT, "the pool runs 1 job(s) and max_concurrent_jobs is 1"),
    ),
]


@pytest.mark.parametrize("row", BLOCKERS, ids=[row.comment for row in BLOCKERS])
def test_blocker(row: Row) -> None:
    state = state_of([*row.active, row.job], row.limit, q=row.queue)
    assert state.blocker(row.job, row.queue) == row.expected


# ---------------------------------------------------------------------------- starvation

STARVING = [
    # (comment, max_bypass, bypass counts of the queued jobs j1..jn) → the job that goes first
    ("nobody reached 2: 0 < 2, 1 < 2", 2, [0, 1], None),
    ("j2 reached 2: 2 >= 2", 2, [0, 2, 3], "j2"),  # j3 (3 >= 2) is later: j2 goes first
    ("max_bypass 0: 0 >= 0, the first in order goes first (strict FIFO)", 0, [0, 0], "j1"),
]


@pytest.mark.parametrize(("comment", "max_bypass", "counts", "first"), STARVING)
def test_the_first_starving_job_goes_first(
    comment: str, max_bypass: int, counts: list[int], first: str | None
) -> None:
    queued = [record(i + 1, bypassed=n) for i, n in enumerate(counts)]
    queue = queue_config(max_bypass=max_bypass)
    state = state_of(queued, q=queue)
    assert state.starving.get("q") == first
    for job in queued:
        blocked = state.blocker(job, queue)
        if first is None or job.job_id == first:
            assert blocked is None
        else:
            assert blocked == Blocked(
                Reason.WAITS_BEHIND,
                f"queue 'q' holds back later jobs until job {first} starts "
                f"(it was passed over {max_bypass} times)",
            )


def test_a_start_passes_over_the_jobs_that_waited_before_it() -> None:
    # max_bypass 2; j1 was passed over once, j2 never; both wait, then j3 starts:
    # j1 1 + 1 = 2 >= 2 (starving from now on), j2 0 + 1 = 1
    queue = queue_config(max_bypass=2)
    j1, j2, j3, j4 = record(1, bypassed=1), record(2), record(3), record(4)
    state = state_of([j1, j2, j3, j4], q=queue)
    state.waited(j1)
    state.waited(j2)
    assert state.started(j3, queue, asked(j3)) == {"j1": 2, "j2": 1}
    assert state.starving == {"q": "j1"}
    assert state.blocker(j4, queue) is not None  # nothing later passes j1 in this cycle
    # the records themselves are not changed: recording the counts is the lifecycle's
    assert (j1.bypassed, j2.bypassed) == (1, 0)


def test_seed_000s_backfill_a_smaller_job_passes_one_that_does_not_fit() -> None:
    # cap 10, 7 workers run: the 4-worker job waits (7 + 4 = 11 > 10), the 3-worker job behind
    # it starts (7 + 3 = 10) and passes it over once; then the queue is full (10 + 1 > 10)
    queue = queue_config(cap=10)
    seven, four, three, one = (
        record(1, status=RUNNING, workers=7),
        record(2, workers=4),
        record(3, workers=3),
        record(4, workers=1),
    )
    state = state_of([seven, four, three, one], q=queue)
    assert state.blocker(four, queue) is not None
    state.waited(four)
    assert state.blocker(three, queue) is None
    assert state.started(three, queue, asked(three)) == {"j2": 1}
    assert state.blocker(one, queue) == Blocked(
        Reason.WORKER_CAP, "needs 1 worker instance(s), queue 'q' has 0 free (cap 10, 10 running)"
    )


def test_starts_in_another_queue_pass_nobody_over() -> None:
    a, b = queue_config("a", max_bypass=1), queue_config("b", max_bypass=1)
    waiting, other = record(1, queue="a"), record(2, queue="b")
    state = state_of([waiting, other], a=a, b=b)
    state.waited(waiting)
    assert state.started(other, b, asked(other)) == {}
    assert state.starving == {}


# ---------------------------------------------------------------------------- the property


@st.composite
def workloads(draw: st.DrawFn) -> tuple[dict[str, QueueConfig], list[tuple[int, Job, int]], int]:
    """Queues, jobs (arrival cycle, record, cycles it runs) and the fleet's slot count."""
    queues = {
        name: queue_config(
            name,
            cap=draw(st.sampled_from([-1, 2, 3, 5])),
            max_bypass=draw(st.integers(0, 3)),
        )
        for name in draw(st.sampled_from([["a"], ["a", "b"]]))
    }
    jobs = []
    for seq in range(1, draw(st.integers(1, 14)) + 1):
        queue = draw(st.sampled_from(sorted(queues)))
        cap = queues[queue].worker_cap
        job = record(
            seq,
            queue=queue,
            priority=draw(st.integers(-1, 1)),
            # more workers than the cap are refused at submit: such a job never waits
            workers=draw(st.integers(1, 3 if cap is None else min(3, cap))),
        )
        jobs.append((draw(st.integers(0, 6)), job, draw(st.integers(1, 4))))
    return queues, jobs, draw(st.integers(3, 6))


@settings(max_examples=300, deadline=None)
@given(workloads(), st.sampled_from([None, 1, 2, 3]))
def test_no_job_is_passed_over_more_than_max_bypass_times(
    workload: tuple[dict[str, QueueConfig], list[tuple[int, Job, int]], int], limit: int | None
) -> None:
    """Cycles as JobService.cycle runs them, with placement by free slots (a job needs one
    slot per worker; backfill happens when a small job fits where a big one does not). The
    bound is counted independently of the implementation: each start of a job passes over
    every job of its queue still waiting ahead of it in the waiting order."""
    queues, arrivals, slots = workload
    jobs: list[Job] = []
    ends: dict[str, int] = {}  # running job → the cycle it ends at
    passed_over: dict[str, int] = {}  # the test's own count
    for now in range(60):
        for job in jobs:
            if job.status is RUNNING and ends[job.job_id] <= now:
                job.status = JobStatus.COMPLETED
        jobs.extend(job for at, job, _ in arrivals if at == now)
        runs = {job.job_id: cycles for _, job, cycles in arrivals}
        free = slots - sum(j.workers for j in jobs if j.status is RUNNING)
        waiting = waiting_order(jobs)
        state = CycleState.of(jobs, waiting, limit, queues, held=asked)
        for job in waiting:
            queue = queues[job.queue]
            blocked = state.blocker(job, queue)
            if blocked is None and job.workers > free:
                blocked = Blocked(Reason.NO_RESOURCES, "no room")
            if blocked is not None:
                state.waited(job)
                continue
            ahead = [
                w
                for w in waiting
                if w.status is QUEUED
                and w.queue == job.queue
                and (-w.priority, w.seq) < (-job.priority, job.seq)
            ]
            for w in ahead:
                passed_over[w.job_id] = passed_over.get(w.job_id, 0) + 1
                assert passed_over[w.job_id] <= queue.max_bypass, (w, job)
            for job_id, count in state.started(
                job, queue, asked(job)
            ).items():  # what the lifecycle records
                next(j for j in jobs if j.job_id == job_id).bypassed = count
            job.status, free, ends[job.job_id] = RUNNING, free - job.workers, now + runs[job.job_id]
        assert {j.job_id: j.bypassed for j in jobs if j.bypassed} == passed_over
    assert all(j.status is JobStatus.COMPLETED for j in jobs), "the workload did not drain"


def test_a_start_holds_its_resources_for_the_rest_of_the_cycle() -> None:
    # 2 GPUs started this cycle + 2 asked = 4 > 3: the second waits although nothing ran before
    queue = queue_config(maximum_allowed_resources={"gpus": 3})
    first, second = record(1, gpus=2), record(2, gpus=2)
    state = state_of([first, second], q=queue)
    assert state.blocker(first, queue) is None
    state.started(first, queue, asked(first))
    assert state.blocker(second, queue) == Blocked(
        Reason.QUEUE_RESOURCES,
        "needs 2 gpus, queue 'q' has 1 free of its maximum_allowed_resources.gpus 3 (2 held)",
    )
