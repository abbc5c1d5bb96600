"""Preemption (issue 10, item 4): which running jobs a waiting job of higher priority stops,
on tables with the reasoning in comments; then on a real server with the real local adapter,
a low-priority job is stopped (SIGTERM), requeued with the reason in its history and a
``job_preempted`` event, and runs again once the preemptor has run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.engine.capacity import gang_capacity
from apportion.engine.requests import parse_request
from apportion.jobs.backfill import Gang, Timeline
from apportion.jobs.preemption import Candidate, choose_victims, rows_array
from apportion.jobs.priority import SchedulingConfig
from tests import builders as b
from tests.conftest import running_server
from tests.jobs_helpers import (
    create_queue,
    job,
    run_counter,
    runs_counted,
    sleeper,
    statuses,
    submit,
    until_counted,
    until_reason,
    wait_for,
)


def line(busy: list[int]) -> Timeline:
    """Two nodes of 4 GPUs (n0: rows 0-3, n1: rows 4-7); ``busy`` rows held for ever."""
    s = b.fleet_of(b.cluster("c", [b.node("n0", gpus=4), b.node("n1", gpus=4)])).structure
    held = np.zeros(s.n_gpus, dtype=bool)
    held[busy] = True
    return Timeline.of(s, 100.0, held, [])


FOUR_ON_ONE_NODE = Gang("high", ("c",), parse_request({"gpus": 4}, path="r"), 1, None)


def running(job_id: str, priority: int, started: float, rows: list[int]) -> Candidate:
    return Candidate(job_id, priority, started, rows_array(rows))


@pytest.mark.parametrize(
    ("busy", "candidates", "victims"),
    [
        # lowest priority first, then the most recent: c (0, started 30), then b (0, 20);
        # n1 is then free whole; a (priority 1) is spared
        (
            list(range(8)),
            [
                running("a", 1, 10, [0, 1, 2, 3]),
                running("b", 0, 20, [4, 5]),
                running("c", 0, 30, [6, 7]),
            ],
            ["c", "b"],
        ),
        # n1's 4 and 5 are free already: stopping d (6, 7) is enough, e (all of n0) is spared
        (
            [0, 1, 2, 3, 6, 7],
            [running("d", 0, 40, [6, 7]), running("e", 0, 5, [0, 1, 2, 3])],
            ["d"],
        ),
        # f (most recent) is taken first but alone frees too little; g then frees n0 whole, and
        # f turns out not to be needed: it is spared (the fewest victims)
        (
            [0, 1, 2, 3, 4, 5, 6, 7],
            [running("f", 0, 50, [6]), running("g", 0, 40, [0, 1, 2, 3])],
            ["g"],
        ),
        # even stopping every candidate leaves no node with 4 GPUs: nobody is stopped
        ([0, 1, 4, 5], [running("h", 0, 10, [2]), running("i", 0, 10, [6])], None),
        # it fits already: nothing to stop
        ([0, 1], [running("j", 0, 10, [0, 1])], []),
    ],
    ids=["lowest-then-newest", "enough-with-one", "spare-the-unneeded", "none-would-do", "fits"],
)
def test_the_victims(
    busy: list[int], candidates: list[Candidate], victims: list[str] | None
) -> None:
    chosen = choose_victims(line(busy), FOUR_ON_ONE_NODE, candidates)
    assert (None if chosen is None else [c.job_id for c in chosen]) == victims


async def test_a_higher_priority_job_preempts_and_the_victim_runs_again(
    tmp_path: Path, job_tmp: Path
) -> None:
    eager = SchedulingConfig(preemption_min_run_seconds=0, preemption_interval_seconds=0)
    async with running_server(tmp_path / "data", scheduling=eager) as live:
        small = b.cluster("small", [b.node("s0", gpus=2)])
        async with live.http.post(f"{live.url}/clusters", json=small) as response:
            assert response.status in (200, 201)
        await create_queue(live, name="shared", clusters=["small"], preempt_lower_priority=True)
        marker = job_tmp / "runs"
        low = await submit(
            live, {"queue": "shared", "command": run_counter(marker), "resources": {"gpus": 2}}
        )
        try:
            await wait_for(live, low, "running")
            await until_counted(marker)
            high = await submit(
                live,
                {"queue": "shared", "command": sleeper(0.2), "resources": {"gpus": 2}},
                priority=10,
            )
            done_high = await wait_for(live, high, "completed", within=60)
            done_low = await wait_for(live, low, "completed", within=60)
            assert runs_counted(marker) == "2"  # it ran twice: stopped, then to its end
            assert done_low["runs"] == 1
            assert done_low["start_time"] > done_high["start_time"]  # again after the preemptor
            history = await statuses(live, low)
            assert history == ["queued", "scheduled", "running", "queued", "scheduled", "running",
                               "completed"]  # fmt: skip
            async with live.http.get(f"{live.url}/jobs/{low}/statuses") as response:
                entries = await response.json()
            requeued = entries[3]["reason"]
            assert f"preempted by job {high}" in requeued and "requeued" in requeued
            async with live.http.get(f"{live.url}/events?type=job_preempted") as response:
                events: list[dict[str, Any]] = (await response.json())["data"]
            assert [(e["job_id"], e["preempted_by"]) for e in events] == [(low, high)]
        finally:  # a failed test leaves no job running
            async with live.http.post(f"{live.url}/jobs/{low}/cancel") as response:
                assert response.status == 200
        # a job of the same priority preempts nobody
        peer = await submit(
            live, {"queue": "shared", "command": sleeper(30), "resources": {"gpus": 2}}
        )
        await wait_for(live, peer, "running")
        same = await submit(
            live, {"queue": "shared", "command": ["true"], "resources": {"gpus": 2}}
        )
        await until_reason(live, same, "NoFeasiblePlacement")
        assert (await job(live, peer))["status"] == "running"
        async with live.http.get(f"{live.url}/events?type=job_preempted") as response:
            assert len((await response.json())["data"]) == 1  # still only the first
        async with live.http.post(f"{live.url}/jobs/{peer}/cancel") as response:
            assert response.status == 200
        await wait_for(live, same, "completed", within=60)
        assert (await job(live, peer))["runs"] == 0


# ---------------------------------------------------------------------------- properties
RUNNING_JOBS = st.lists(
    st.tuples(
        st.integers(0, 3),  # priority
        st.integers(0, 100),  # started
        st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True),  # GPU rows
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(jobs=RUNNING_JOBS, gpus=st.integers(1, 4), order=st.randoms(use_true_random=False))
def test_the_victims_are_few_and_do_not_depend_on_the_order_given(
    jobs: list[tuple[int, int, list[int]]], gpus: int, order: Any
) -> None:
    # each running job holds its own GPUs (rows taken by an earlier one are dropped)
    taken: set[int] = set()
    candidates = []
    for index, (priority, started, rows) in enumerate(jobs):
        mine = [r for r in rows if r not in taken]
        taken.update(mine)
        if mine:
            candidates.append(running(f"j{index}", priority, started, mine))
    waiting = Gang("w", ("c",), parse_request({"gpus": gpus}, path="r"), 1, None)
    timeline = line(sorted(taken))
    chosen = choose_victims(timeline, waiting, candidates)
    shuffled = list(candidates)
    order.shuffle(shuffled)
    again = choose_victims(timeline, waiting, shuffled)
    assert (chosen is None) == (again is None)
    if chosen is None or again is None:
        return
    assert [c.job_id for c in chosen] == [c.job_id for c in again]  # deterministic
    free = timeline.free_now()
    for victim in chosen:
        free[victim.rows] = True
    capacity = gang_capacity(timeline.structure, ("c",), waiting.request, 1, free)
    assert capacity.workers >= 1  # with its victims stopped the waiting job fits
    for spared in chosen:  # and none of them could have been spared
        without = free.copy()
        without[spared.rows] = False
        assert gang_capacity(timeline.structure, ("c",), waiting.request, 1, without).workers < 1


async def test_a_queue_takes_back_the_quota_its_cohort_borrowed(
    tmp_path: Path, job_tmp: Path
) -> None:
    eager = SchedulingConfig(preemption_min_run_seconds=0, preemption_interval_seconds=0)
    async with running_server(tmp_path / "data", scheduling=eager) as live:
        small = b.cluster("small", [b.node("s0", gpus=4)])  # 4 H100
        async with live.http.post(f"{live.url}/clusters", json=small) as response:
            assert response.status in (200, 201)
        quota = {"gpus": {"H100": {"nominal": 2}}}
        await create_queue(
            live, name="owner", cohort="lab", quota=quota, reclaim_within_cohort=True
        )
        await create_queue(live, name="borrower", cohort="lab", quota=quota)
        marker = job_tmp / "runs"
        # the borrower runs on all 4: its 2 and the owner's 2, lent while the owner is idle
        borrowed = await submit(
            live, {"queue": "borrower", "command": run_counter(marker), "resources": {"gpus": 4}}
        )
        try:
            await wait_for(live, borrowed, "running")
            await until_counted(marker)
            mine = await submit(
                live, {"queue": "owner", "command": sleeper(0.2), "resources": {"gpus": 2}}
            )
            done_mine = await wait_for(live, mine, "completed", within=60)
            done_borrowed = await wait_for(live, borrowed, "completed", within=60)
            assert done_borrowed["runs"] == 1  # stopped once, then ran to its end
            assert done_borrowed["start_time"] > done_mine["start_time"]
            async with live.http.get(f"{live.url}/events?type=job_preempted") as response:
                (event,) = (await response.json())["data"]
            assert event["job_id"] == borrowed and event["preempted_by"] == mine
            assert "takes back the quota its cohort 'lab' lent" in event["reason"]
        finally:
            async with live.http.post(f"{live.url}/jobs/{borrowed}/cancel") as response:
                assert response.status == 200
    async with (
        running_server(tmp_path / "other") as live,
        live.http.post(
            f"{live.url}/queues", json={"name": "q", "reclaim_within_cohort": True}
        ) as response,
    ):
        assert response.status == 400
        assert "set cohort" in (await response.json())["message"]
