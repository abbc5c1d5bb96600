"""The simulator (issue 10, item 7): traces read as the formats say, small workloads whose start
times can be worked out by hand (strict order against EASY backfill, preemption), fair share
converging on the configured shares for a saturating workload, preemption that never loops
and stays bounded over any workload, and ``apportion simulate`` as a user types it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.jobs.priority import PriorityWeights, SchedulingConfig
from apportion.sim.engine import Preemption, SimConfig, read_config, simulate, synthetic_fleet
from apportion.sim.report import fairness, summarize
from apportion.sim.trace import TraceError, TraceJob, read_trace
from tests.cli_helpers import cli, ok

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "simulate"

SWF = """; Version: 2.2
; a comment line, then three jobs: the second never ran (run time -1)
1 0 5 3600 16 -1 -1 16 7200 -1 1 7 1 -1 1 -1 -1 -1
2 10 -1 -1 4 -1 -1 4 600 -1 5 8 1 -1 1 -1 -1 -1
3 20 0 60 4 -1 -1 -1 -1 -1 1 9 1 -1 1 -1 -1 -1
"""


def test_an_swf_trace(tmp_path: Path) -> None:
    path = tmp_path / "log.swf"
    path.write_text(SWF)
    jobs = read_trace(path, gpus_per_node=8)
    # job 1: 16 processors on 8-GPU nodes → 2 workers of 8; job 3: requested -1 → allocated 4
    assert jobs == [
        TraceJob("1", 0.0, "user7", 2, 8, 3600.0, 7200.0),
        TraceJob("3", 20.0, "user9", 1, 4, 60.0, None),
    ]


def test_a_csv_trace_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "jobs.csv"
    good.write_text(
        "submit_time,account,workers,gpus_per_worker,duration,walltime,gpu_model,priority\n"
        "5,vision,2,4,600,900,H100,3\n0,nlp,1,1,60,,,\n"
    )
    assert read_trace(good, gpus_per_node=8) == [
        TraceJob("2", 0.0, "nlp", 1, 1, 60.0),
        TraceJob("1", 5.0, "vision", 2, 4, 600.0, 900.0, "H100", 3),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("submit_time,account,workers,gpus_per_worker,duration\n0,a,two,1,5\n")
    with pytest.raises(TraceError, match=r"bad.csv:2: invalid literal"):
        read_trace(bad, gpus_per_node=8)
    missing = tmp_path / "missing.csv"
    missing.write_text("submit_time,account\n")
    with pytest.raises(TraceError, match="the header lacks workers, gpus_per_worker, duration"):
        read_trace(missing, gpus_per_node=8)


def starts(config: SimConfig, jobs: list[TraceJob]) -> dict[str, float | None]:
    result = simulate(jobs, synthetic_fleet(1, 8), config)
    return {o.job.job_id: o.start for o in result.outcomes}


# one node of 8 GPUs: A takes 6 until 100; B needs 4 (from 100); C needs 2 for 10 s; D 2 for 500
LINE = [
    TraceJob("A", 0, "x", 1, 6, 100, 100),
    TraceJob("B", 1, "x", 1, 4, 100, 100),
    TraceJob("C", 2, "x", 1, 2, 10, 10),
    TraceJob("D", 3, "x", 1, 2, 500, 500),
]


def test_strict_order_keeps_small_jobs_behind_the_first_that_waits() -> None:
    # B waits for A's end at 100; C and D may not pass it; at 100 B (4), C (2) and D (2) start:
    # 4 + 2 + 2 = 8
    assert starts(SimConfig(backfill="none"), LINE) == {"A": 0, "B": 100, "C": 100, "D": 100}


def test_easy_backfill_lets_jobs_pass_that_do_not_delay_the_first() -> None:
    # B is reserved at 100 (A's walltime). C passes it at 2 (it ends at 12, before 100). D finds
    # no GPU until C ends at 12; then it passes B too: it runs past 100, but on 2 of the 4 GPUs
    # B leaves spare at 100 (A's 6 + C's 2 − D's 2 = 6 ≥ 4)
    assert starts(SimConfig(backfill="easy"), LINE) == {"A": 0, "B": 100, "C": 2, "D": 12}


def test_easy_backfill_holds_back_a_job_that_would_delay_the_first() -> None:
    # B now needs the whole node at 100: D, running past 100 on 2 of its GPUs, would delay it,
    # so D waits until B's end at 200; C (ends at 12) still passes
    whole = [LINE[0], TraceJob("B", 1, "x", 1, 8, 100, 100), LINE[2], LINE[3]]
    assert starts(SimConfig(backfill="easy"), whole) == {"A": 0, "B": 100, "C": 2, "D": 200}
    assert starts(SimConfig(backfill="none"), whole) == {"A": 0, "B": 100, "C": 200, "D": 200}


def saturating(shares: dict[str, int], jobs_each: int = 300) -> list[TraceJob]:
    """Every account submits, at time 0, more 1-GPU jobs of 100 s than the fleet can run."""
    return [
        TraceJob(f"{account}-{i}", 0.0, account, 1, 1, 100.0, 100.0)
        for i in range(jobs_each)
        for account in shares
    ]


@settings(max_examples=8, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 4), min_size=2))
def test_fair_share_converges_on_the_configured_shares(shares: dict[str, int]) -> None:
    fair = SchedulingConfig(
        weights=PriorityWeights(job=0, fair_share=1000), fair_share_half_life_seconds=1e9
    )
    config = SimConfig(scheduling=fair, shares=shares)
    jobs = saturating(shares)
    result = simulate(jobs, synthetic_fleet(1, 8), config)
    # while every account still has jobs waiting, each one's part of the GPU time follows its
    # shares: count the GPU-seconds run up to the first moment an account ran out of work
    horizon = (
        min(
            max(o.end or 0.0 for o in result.outcomes if o.job.account == account)
            for account in shares
        )
        * 0.8
    )
    used = dict.fromkeys(shares, 0.0)
    for o in result.outcomes:
        if o.start is not None and o.start < horizon:
            used[o.job.account] += min(o.end or horizon, horizon) - o.start
    total_used, total_shares = sum(used.values()), sum(shares.values())
    for account, share in shares.items():
        assert used[account] / total_used == pytest.approx(share / total_shares, abs=0.05)


def test_without_fair_share_the_first_to_submit_gets_everything_first() -> None:
    shares = {"a": 1, "b": 1}
    jobs = sorted(saturating(shares), key=lambda j: j.account)  # every a before every b
    fifo = simulate(jobs, synthetic_fleet(1, 8), SimConfig(shares=shares))
    first_b = min(o.start or 0.0 for o in fifo.outcomes if o.job.account == "b")
    assert first_b == max(o.start or 0.0 for o in fifo.outcomes if o.job.account == "a")
    assert 0.0 < fairness(fifo) <= 1.0


def test_the_example_configurations_read(tmp_path: Path) -> None:
    names = [read_config(EXAMPLES / f"{n}.toml").name for n in ("fifo", "backfill", "fairshare")]
    assert names == ["fifo", "backfill", "fairshare"]
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('backfill = "sometimes"\n')
    with pytest.raises(ValueError, match=r"wrong.toml: backfill: Input should be 'easy' or 'none'"):
        read_config(wrong)


async def test_apportion_simulate_compares_configurations(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = await cli(
        None,
        "simulate",
        str(EXAMPLES / "gpu-teams.csv"),
        "--config",
        str(EXAMPLES / "fifo.toml"),
        "-c",
        str(EXAMPLES / "backfill.toml"),
        "--nodes",
        "16",
        "--html",
        str(report),
        key=None,
    )
    out = ok(result)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["fifo"][1] == rows["backfill"][1] == "600/600"
    assert int(rows["fifo"][-2]) == 0 and int(rows["backfill"][-2]) > 0  # BACKFILLED
    assert rows["fifo"][-1] == rows["backfill"][-1] == "0"  # PREEMPTED: neither preempts
    page = report.read_text()
    assert page.count("<svg") == 3  # the waits, and each configuration's shares
    missing = await cli(None, "simulate", str(tmp_path / "none.csv"), "-c", "x.toml", key=None)
    assert missing.exit_code == 1 and "none.csv" in missing.stderr


def test_the_summary_of_a_small_run() -> None:
    summary = summarize(simulate(LINE, synthetic_fleet(1, 8), SimConfig(backfill="none")))
    # waits: A 0, B 99, C 98, D 97 → mean 73.5; GPU-seconds 600 + 400 + 20 + 1000 = 2020 over
    # 8 GPUs × (600 − 0) s (D ends last, at 100 + 500)
    assert summary.mean_wait == pytest.approx(73.5)
    assert summary.utilisation == pytest.approx(2020 / (8 * 600))
    assert summary.backfilled == 0 and summary.started == 4


def preempting(min_run: float = 0.0, interval: float = 0.0) -> SimConfig:
    scheduling = SchedulingConfig(
        preemption_min_run_seconds=min_run, preemption_interval_seconds=interval
    )
    return SimConfig(preemption=True, scheduling=scheduling)


# one node of 8 GPUs: L (priority 0) takes all 8 from 0 for 100 s; H (priority 5) needs 4 for
# 30 s from 10
URGENT = [
    TraceJob("L", 0, "x", 1, 8, 100, 200, priority=0),
    TraceJob("H", 10, "x", 1, 4, 30, 60, priority=5),
]


def test_a_job_of_higher_priority_preempts_and_its_victim_starts_again() -> None:
    result = simulate(URGENT, synthetic_fleet(1, 8), preempting())
    low, high = result.outcomes
    # L is stopped at 10 and H starts at once; L needs all 8 GPUs again, so it starts when H
    # ends at 40, from the beginning: 40 + 100 = 140; 10 s of its first run were lost
    assert (high.start, high.end) == (10, 40)
    assert (low.start, low.end, low.preempted, low.lost) == (40, 140, 1, 10)
    assert low.run_starts == [0, 40]
    assert [(p.at, p.victim, p.preemptor, p.run_started) for p in result.preemptions] == [
        (10, 0, 1, 0)
    ]
    summary = summarize(result)
    # GPU-seconds: L 8 × (10 + 100), H 4 × 30 = 1000 over 8 GPUs × 140 s
    assert summary.preempted == 1
    assert summary.utilisation == pytest.approx(1000 / (8 * 140))


def test_without_preemption_the_urgent_job_waits() -> None:
    result = simulate(URGENT, synthetic_fleet(1, 8), SimConfig())
    assert [o.start for o in result.outcomes] == [0, 100]
    assert result.preemptions == []


def test_the_minimum_run_time_defers_a_preemption_to_when_it_has_passed() -> None:
    # L may be preempted once it has run 60 s: nothing arrives or ends then, but the simulator
    # wakes up at 60 as the server's cycles would; H runs 60-90, L again from 90 to 190
    result = simulate(URGENT, synthetic_fleet(1, 8), preempting(min_run=60))
    low, high = result.outcomes
    assert (high.start, low.run_starts, low.lost, low.end) == (60, [0, 90], 60, 190)


@settings(max_examples=60, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.integers(0, 60),  # submit
            st.integers(0, 3),  # priority
            st.sampled_from([1, 2, 4, 8]),  # GPUs
            st.integers(1, 80),  # duration
        ),
        min_size=1,
        max_size=25,
    ),
    min_run=st.sampled_from([0.0, 20.0]),
    interval=st.sampled_from([0.0, 15.0]),
)
@pytest.mark.timeout(120)
def test_preemption_never_loops_and_is_bounded(
    jobs: list[tuple[int, int, int, int]], min_run: float, interval: float
) -> None:
    trace = [
        TraceJob(str(i), float(submit), "x", 1, gpus, float(d), float(d), priority=priority)
        for i, (submit, priority, gpus, d) in enumerate(sorted(jobs))
    ]
    result = simulate(trace, synthetic_fleet(2, 8), preempting(min_run, interval))
    outcomes = result.outcomes
    assert all(o.end is not None for o in outcomes)  # every job ran to its end
    by_victim: dict[int, list[Preemption]] = {}
    for p in result.preemptions:
        # only a job of strictly higher priority preempts, and only one that has run long enough
        assert trace[p.preemptor].priority > trace[p.victim].priority
        assert p.run_started in outcomes[p.victim].run_starts
        assert p.at - p.run_started >= min_run
        by_victim.setdefault(p.victim, []).append(p)
    for victim, preemptions in by_victim.items():
        assert outcomes[victim].preempted == len(preemptions)
        # by each job of higher priority at most once per run of that job
        for preemptor, count in Counter(p.preemptor for p in preemptions).items():
            assert count <= len(outcomes[preemptor].run_starts)
        for earlier, later in itertools.pairwise(preemptions):
            # not preempted again before the job that preempted it had started
            started = outcomes[earlier.preemptor].run_starts
            assert any(earlier.at <= s <= later.at for s in started)
