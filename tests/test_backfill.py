"""Backfill with walltimes and start estimates (issue 10, items 5 and 6): the timeline on
tables, with the arithmetic in comments; the property that backfill never delays the job first
in line; then a real server whose small cluster makes a job wait for GPUs, lets a short job
pass it and holds back a long one, and says when each is expected to start.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.engine.requests import parse_request
from apportion.jobs import service as service_module
from apportion.jobs.backfill import NEVER, Gang, Reservation, Timeline, estimate_starts
from apportion.registry.fleet_structure import Structure
from tests import builders as b
from tests.cli_helpers import cli, ok
from tests.conftest import Running
from tests.jobs_helpers import gated, job, submit, until_reason, wait_for


def structure(nodes: int = 2, gpus: int = 4) -> Structure:
    """One cluster ``c`` of ``nodes`` nodes (n0, n1, …) of ``gpus`` GPUs each; GPU rows are
    node-major: n0's are 0…gpus-1."""
    doc = b.cluster("c", [b.node(f"n{i}", gpus=gpus) for i in range(nodes)])
    return b.fleet_of(doc).structure


def gang(job_id: str, gpus: int, workers: int = 1, walltime: float | None = 100.0) -> Gang:
    return Gang(job_id, ("c",), parse_request({"gpus": gpus}, path="request"), workers, walltime)


def timeline(s: Structure, busy: dict[int, float], now: float = 0.0) -> Timeline:
    """GPU rows ``busy`` until the given times (NEVER: no walltime); the others free."""
    held = np.zeros(s.n_gpus, dtype=bool)
    held[list(busy)] = True
    return Timeline.of(s, now, held, [([row], end) for row, end in busy.items()])


# n0: GPUs 0-3, n1: GPUs 4-7
N0_BUSY_TO_100 = {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0}
N1_HALF_BUSY_TO_50 = {4: 50.0, 5: 50.0}


def test_the_earliest_start_is_when_enough_gpus_on_one_node_are_free() -> None:
    s = structure()
    line = timeline(s, N0_BUSY_TO_100 | N1_HALF_BUSY_TO_50)
    # 4 GPUs on one node: n1 has 2 free now and 4 at 50; n0 none before 100 → 50 on n1
    fit = line.earliest(gang("head", 4))
    assert fit is not None and fit.start == 50.0 and fit.rows.tolist() == [4, 5, 6, 7]
    # 2 GPUs fit now, on n1's free ones
    now = line.earliest(gang("small", 2))
    assert now is not None and now.start == 0.0 and now.rows.tolist() == [6, 7]
    # 8 GPUs as 2 workers of 4: both nodes whole, at 100
    both = line.earliest(gang("big", 4, workers=2))
    assert both is not None and both.start == 100.0


def test_a_gang_needing_gpus_held_without_walltime_has_no_estimate() -> None:
    s = structure(nodes=1)
    line = timeline(s, {0: NEVER, 1: NEVER})
    assert line.earliest(gang("head", 3)) is None  # 2 of 4 are never freed
    assert line.earliest(gang("fits", 2)) is not None


def test_a_gang_must_fit_for_its_whole_walltime() -> None:
    s = structure(nodes=1)
    line = timeline(s, {0: 10.0, 1: 10.0})
    line.book(line.earliest(gang("first", 4, walltime=30)) or pytest.fail("no fit"), 30.0)
    # "first" holds all 4 from 10 to 40: a 2-GPU job of 20 s fits now (0-20)? No: rows 0-1
    # are busy until 10, 2-3 free until 10 only; so it starts at 40
    fit = line.earliest(gang("next", 2, walltime=20))
    assert fit is not None and fit.start == 40.0
    # a 2-GPU job of 5 s fits on GPUs 2-3 now: it ends at 5, before "first" takes them at 10
    short = line.earliest(gang("short", 2, walltime=5))
    assert short is not None and short.start == 0.0 and short.rows.tolist() == [2, 3]


@pytest.mark.parametrize(
    ("walltime", "rows", "delays"),
    [
        (30.0, [6, 7], False),  # ends at 30, before the reservation at 50
        (80.0, [6, 7], True),  # runs at 50 on n1, which the head needs whole
        (None, [6, 7], True),  # no walltime: runs for ever
        (None, [], False),  # takes no GPU: cannot delay it
    ],
)
def test_a_reservation_is_delayed_only_by_what_runs_on_its_gpus_at_its_start(
    walltime: float | None, rows: list[int], delays: bool
) -> None:
    s = structure()
    line = timeline(s, N0_BUSY_TO_100 | N1_HALF_BUSY_TO_50)
    head = gang("head", 4)
    fit = line.earliest(head)
    assert fit is not None
    assert Reservation(head, fit.start).delays(line, walltime, rows) is delays


def test_estimates_follow_the_order_of_the_line() -> None:
    s = structure()
    line = timeline(s, N0_BUSY_TO_100 | N1_HALF_BUSY_TO_50)
    starts = estimate_starts(
        line, [gang("a", 4, walltime=100), gang("b", 4, walltime=100), gang("c", 2, walltime=10)]
    )
    # a: n1 at 50 (until 150); b: n0 at 100; c: nothing free before 150 on n1 or 200 on n0,
    # but n1's GPUs 6-7 are free now until a takes them at 50: a 10 s job fits now
    assert starts == {"a": 50.0, "b": 100.0, "c": 0.0}


# ---------------------------------------------------------------------------- the property
ENDS = st.one_of(st.just(NEVER), st.floats(1, 500).map(round))


@settings(max_examples=300, deadline=None)
@given(
    busy=st.dictionaries(st.integers(0, 11), ENDS, max_size=12),
    head_gpus=st.integers(1, 4),
    head_workers=st.integers(1, 3),
    others=st.lists(
        st.tuples(st.integers(1, 4), st.one_of(st.none(), st.floats(1, 600).map(round))),
        max_size=6,
    ),
)
def test_backfill_never_delays_the_reservation(
    busy: dict[int, float],
    head_gpus: int,
    head_workers: int,
    others: list[tuple[int, float | None]],
) -> None:
    s = structure(nodes=3, gpus=4)
    line = timeline(s, busy)
    head = gang("head", head_gpus, head_workers)
    fit = line.earliest(head)
    if fit is None:
        return  # no estimate, no reservation: the max_bypass bound is the backstop
    reservation = Reservation(head, fit.start)
    for index, (gpus, walltime) in enumerate(others):
        placed = line.earliest(gang(f"o{index}", gpus, walltime=walltime))
        if placed is None or placed.start > line.now:
            continue  # it could not start now anyway
        if reservation.delays(line, walltime, placed.rows.tolist()):
            continue  # the cycle keeps it waiting
        line.occupy(placed.rows, line.now + (NEVER if walltime is None else walltime))
        again = line.earliest(head)
        assert again is not None and again.start <= reservation.start


# ---------------------------------------------------------------------------- a real server
def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def estimated(running: Running, job_id: str) -> float:
    """The job's estimated start, once the cycle that recorded its reason has set it."""
    for _ in range(600):  # a generous deadline, not a timing assertion
        record = await job(running, job_id)
        if record["estimated_start"] is not None:
            return seconds(record["estimated_start"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} has no estimated start: {record}")


async def hold_a_small_cluster(running: Running, gate: Path, *, gpus: int) -> str:
    """Register ``small`` (one node of 4 GPUs) and submit a job holding ``gpus`` of them with a
    walltime of 600 s until ``gate`` exists; its id."""
    small = b.cluster("small", [b.node("s0", gpus=4)])
    async with running.http.post(f"{running.url}/clusters", json=small) as response:
        assert response.status in (200, 201), await response.text()
    return await submit(
        running, {"command": gated(gate), "resources": {"gpus": gpus}, "walltime": 600}
    )


async def test_a_short_job_passes_the_first_in_line_and_a_long_one_does_not(
    running: Running, job_tmp: Path
) -> None:
    gate = job_tmp / "may-end"
    holder = await hold_a_small_cluster(running, gate, gpus=2)
    started = seconds((await wait_for(running, holder, "running"))["start_time"])
    head = await submit(running, {"command": ["true"], "resources": {"gpus": 4}, "walltime": 60})
    await until_reason(running, head, "NoFeasiblePlacement")
    record: dict[str, Any] = await job(running, head)
    assert "first in line for GPUs" in record["reason"]["message"]
    # reserved when the holder's walltime runs out
    assert await estimated(running, head) == pytest.approx(started + 600, abs=1.0)
    long = await submit(running, {"command": ["true"], "resources": {"gpus": 2}, "walltime": 3600})
    await until_reason(running, long, "WaitsForReservation", f"it would delay job {head}")
    plan = {"config": {"command": ["true"], "resources": {"gpus": 2}, "walltime": 3600}}
    async with running.http.post(f"{running.url}/jobs/plan", json=plan) as response:
        planned = await response.json()
    assert planned["would_start"] is False, planned
    assert planned["reason"]["code"] == "WaitsForReservation"
    # after the head's 60 s: the long job's estimate
    assert await estimated(running, long) == pytest.approx(started + 660, abs=1.0)
    short = await submit(running, {"command": ["true"], "resources": {"gpus": 2}, "walltime": 30})
    await wait_for(running, short, "completed")  # it ends long before the reservation
    assert (await job(running, holder))["estimated_start"] is None  # an estimate is a waiter's
    table = ok(await cli(running, "jobs"))
    (row,) = [r for r in table.splitlines() if r.startswith(head[:12])]
    assert "queued" in row and "N/A" not in row  # START: its estimate
    for waiting in (head, long):
        async with running.http.post(f"{running.url}/jobs/{waiting}/cancel") as response:
            assert response.status == 200
    gate.touch()
    await wait_for(running, holder, "completed")


async def test_a_cycle_estimates_only_the_jobs_it_leaves_waiting(
    running: Running, job_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the jobs a cycle admits were still queued when it estimated: each cycle estimated
    # the start of every job it was starting (work thrown away at their move to scheduled)
    estimated_for: list[str] = []

    def recording(timeline: Timeline, gangs: list[Gang]) -> dict[str, float | None]:
        estimated_for.extend(g.job_id for g in gangs)
        return estimate_starts(timeline, gangs)

    monkeypatch.setattr(service_module, "estimate_starts", recording)
    gate = job_tmp / "may-end"
    holder = await hold_a_small_cluster(running, gate, gpus=4)
    await wait_for(running, holder, "running")
    waiting = await submit(running, {"command": ["true"], "resources": {"gpus": 4}})
    await until_reason(running, waiting, "NoFeasiblePlacement")
    for _ in range(600):  # the estimate follows the reason, in the same cycle
        if waiting in estimated_for:
            break
        await asyncio.sleep(0.05)
    assert waiting in estimated_for  # a job left waiting is estimated…
    assert holder not in estimated_for  # …the one a cycle started is not
    gate.touch()
    await wait_for(running, waiting, "completed")
    assert holder not in estimated_for
