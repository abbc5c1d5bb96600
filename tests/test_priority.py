"""The multifactor priority of waiting jobs (issue 10, item 3): the factors on tables, with the
arithmetic in comments; the default weights keep seed 001's order; on a real server, fair share
puts a light account's job ahead of a heavy one's, and ``GET /priority`` / ``apportion
priority`` show why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.jobs.admission import waiting_order
from apportion.jobs.priority import Multifactor, PriorityWeights, SchedulingConfig
from apportion.ownership import Owner
from tests.cli_helpers import cli, ok
from tests.conftest import Running, running_server
from tests.jobs_helpers import gated, record, sleeper, submit, wait_for

HOUR = 3600.0


def multifactor(now: float = 0.0, **weights: float) -> Multifactor:
    config = SchedulingConfig(weights=PriorityWeights(**weights), max_age_seconds=10 * HOUR)
    return Multifactor(
        config,
        now=now,
        fleet_gpus=64,
        fair_share={"heavy": 0.25, "light": 1.0},
        queue_factors={"q": 2, "urgent": 8},
    )


def test_each_factor() -> None:
    job = record(1, priority=7, workers=2, gpus=8)  # created at 0, queue q, account default
    factors = multifactor(now=5 * HOUR).factors(job)
    assert factors.job == 7
    assert factors.age == pytest.approx(0.5)  # 5 h of a 10 h max age
    assert factors.job_size == pytest.approx(0.25)  # 2 × 8 of 64 GPUs
    assert factors.queue == pytest.approx(0.25)  # q's 2 of the largest, 8
    assert factors.fair_share == 1.0  # an account without usage
    assert multifactor(now=20 * HOUR).factors(job).age == 1.0  # capped at max age


def test_the_priority_is_the_weighted_sum() -> None:
    job = record(1, priority=7, workers=2, gpus=8)
    weighted = multifactor(now=5 * HOUR, job=1, age=100, job_size=40, queue=8, fair_share=1000)
    # 1·7 + 100·0.5 + 40·0.25 + 8·0.25 + 1000·1.0 = 7 + 50 + 10 + 2 + 1000 = 1069
    assert weighted.priority(job) == pytest.approx(1069)
    assert weighted.factors(job).public()["weighted"] == {
        "job": 7,
        "age": 50,
        "fair_share": 1000,
        "job_size": 10,
        "queue": 2,
    }


def test_favor_small_turns_the_size_factor_round() -> None:
    config = SchedulingConfig(favor_small=True)
    small = Multifactor(config, now=0, fleet_gpus=64, fair_share={}, queue_factors={})
    assert small.factors(record(1, workers=2, gpus=8)).job_size == pytest.approx(0.75)


def test_the_default_weights_keep_seed_001s_order() -> None:
    # priority first, then first come first served; age, usage and size count for nothing
    jobs = [record(1, priority=0), record(2, priority=5), record(3, priority=0, gpus=8)]
    default = Multifactor(
        SchedulingConfig(), now=1e9, fleet_gpus=8, fair_share={}, queue_factors={}
    )
    assert [j.seq for j in waiting_order(jobs, default.priority)] == [2, 1, 3]
    assert [j.seq for j in waiting_order(jobs)] == [2, 1, 3]


def test_fair_share_orders_accounts_by_what_they_used() -> None:
    heavy, light = record(1), record(2)
    heavy.owner = Owner("heavy", "h", None)
    light.owner = Owner("light", "l", None)
    # heavy came first, but 1000 × 0.25 = 250 < 1000 × 1.0: light goes first
    order = waiting_order([heavy, light], multifactor(fair_share=1000, job=0).priority)
    assert [j.seq for j in order] == [2, 1]


# ---------------------------------------------------------------------------- a real server
async def key_for(live: Running, account: str) -> str:
    async with live.http.post(f"{live.url}/accounts", json={"name": account}) as response:
        assert response.status == 201
    body = {"name": f"{account}-key", "scope": "submit", "account": account}
    async with live.http.post(f"{live.url}/keys", json=body) as response:
        return str((await response.json())["data"]["api_key"])


async def submit_as(live: Running, key: str, config: dict[str, Any]) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(f"{live.url}/jobs/submit", json={"config": config}) as response,
    ):
        answer = await response.json()
        assert response.status == 201, answer
        return str(answer["job_id"])


async def test_fair_share_puts_the_light_accounts_job_first(tmp_path: Path, job_tmp: Path) -> None:
    weights = SchedulingConfig(weights=PriorityWeights(job=0, fair_share=1000))
    async with running_server(tmp_path / "data", scheduling=weights) as live:
        await live.load_demo_fleet()
        heavy, light = await key_for(live, "heavy"), await key_for(live, "light")
        used = await submit_as(live, heavy, {"command": sleeper(0.3), "resources": {"gpus": 8}})
        await wait_for(live, used, "completed")  # heavy has used 8 GPUs for a while; light none
        async with live.http.put(f"{live.url}/pool/limits", json={"max_concurrent_jobs": 1}) as r:
            assert r.status == 200
        gate = job_tmp / "may-end"
        blocker = await submit(live, {"command": gated(gate)})  # the admin's: default account
        await wait_for(live, blocker, "running")
        first = await submit_as(live, heavy, {"command": ["true"], "resources": {"gpus": 1}})
        second = await submit_as(live, light, {"command": ["true"], "resources": {"gpus": 1}})
        async with live.http.get(f"{live.url}/priority") as response:
            lines = await response.json()
        assert [line["job_id"] for line in lines] == [second, first], lines
        heavy_line, light_line = lines[1], lines[0]
        assert light_line["factors"]["fair_share"] == 1.0  # it used nothing
        assert heavy_line["factors"]["fair_share"] < 0.5  # all usage, a third of the shares
        assert light_line["priority"] == 1000.0 and light_line["position"] == 1
        assert (await (await live.http.get(f"{live.url}/jobs/{second}")).json())[
            "queue_position"
        ] == 1
        table = ok(await cli(live, "priority"))
        rows = [row.split() for row in table.splitlines()[1:]]
        assert [row[0] for row in rows] == [second[:12], first[:12]]
        assert rows[0][1:4] == ["light", "default", "1000"]
        gate.touch()
        done_light = await wait_for(live, second, "completed")
        done_heavy = await wait_for(live, first, "completed")
        assert done_light["start_time"] <= done_heavy["start_time"]  # light went first


@settings(max_examples=200, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.integers(-100, 100),  # own priority
            st.floats(0, 20 * HOUR),  # created at
            st.integers(0, 8),  # GPUs per worker
            st.integers(1, 4),  # workers
            st.sampled_from(["heavy", "light", "other"]),
            st.sampled_from(["q", "urgent", "none"]),
        ),
        max_size=12,
    ),
    weights=st.fixed_dictionaries(
        {name: st.floats(0, 1000) for name in ("job", "age", "fair_share", "job_size", "queue")}
    ),
    favor_small=st.booleans(),
)
def test_the_whole_line_at_once_agrees_with_each_job_alone(
    jobs: list[tuple[int, float, int, int, str, str]],
    weights: dict[str, float],
    favor_small: bool,
) -> None:
    # the admission cycle orders the line with priorities(); GET /priority shows factors()
    records = []
    for index, (own, created, gpus, workers, account, queue) in enumerate(jobs):
        job = record(index, priority=own, workers=workers, gpus=gpus, queue=queue)
        job.created_at, job.owner = created, Owner(account, "u", None)
        records.append(job)
    config = SchedulingConfig(
        weights=PriorityWeights(**weights), max_age_seconds=10 * HOUR, favor_small=favor_small
    )
    line = Multifactor(
        config,
        now=10 * HOUR,
        fleet_gpus=64,
        fair_share={"heavy": 0.25, "light": 1.0},
        queue_factors={"q": 2, "urgent": 8},
    )
    assert line.priorities(records).tolist() == pytest.approx(
        [line.factors(job).priority for job in records]
    )
