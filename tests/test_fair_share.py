"""Fair share (issue 10, item 3): each account's usage in GPU- and CPU-seconds, decayed with a
half-life, against its shares (jobs/fairshare.py); ``GET /share`` and ``apportion share``.

The arithmetic is checked on tables (with the sums in comments); then a real server runs real
jobs and the usage it reports is the one their records' start and end times give, survives a
deleted job and a restart, and is shown to each key as its account may see it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apportion.jobs.fairshare import Decayed, UsageBook, account_shares, decayed_run
from apportion.jobs.priority import WEEK
from tests.cli_helpers import as_json, cli, ok
from tests.conftest import ADMIN_KEY, Running, running_server
from tests.jobs_helpers import record, sleeper, submit, wait_for


# ---------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("amount", "start", "end", "now", "half_life", "expected"),
    [
        # 2 GPUs for 100 s, weighed at their end, H = 100: 2·100/ln2·(1 − ½) = 100/ln2
        (2, 0, 100, 100, 100, 100 / math.log(2)),
        # the same one half-life later: half of it
        (2, 0, 100, 200, 100, 50 / math.log(2)),
        # a half-life far longer than the run: almost GPUs × seconds (4 × 60 = 240)
        (4, 0, 60, 60, 1e12, 240),
        (4, 60, 60, 60, 100, 0),  # no time, no usage
    ],
)
def test_a_run_weighs_its_decayed_integral(
    amount: float, start: float, end: float, now: float, half_life: float, expected: float
) -> None:
    assert decayed_run(amount, start, end, now, half_life) == pytest.approx(expected, rel=1e-6)


def test_the_book_decays_what_ended_before_adding_the_next_run() -> None:
    book = UsageBook(half_life=100)
    first = record(1, gpus=2)
    first.start_time, first.end_time = 0.0, 100.0
    second = record(2, gpus=2)
    second.start_time = 100.0
    row = book.charge(first, 100.0)
    assert row is not None and row.gpu_seconds == pytest.approx(100 / math.log(2))
    # one half-life later the first run weighs half, and the second adds 100/ln2 more
    row = book.charge(second, 200.0)
    assert row is not None and row.gpu_seconds == pytest.approx(150 / math.log(2))
    assert row.as_of == 200.0
    assert book.charge(record(3, gpus=2), 300.0) is None  # it never started: nothing to charge
    # a running job counts what it used so far
    running = record(4, gpus=1)
    running.start_time = 200.0
    usage = book.usage(300.0, [running])[first.owner.account]
    assert usage.gpu_seconds == pytest.approx(75 / math.log(2) + 50 / math.log(2))


@pytest.mark.parametrize(
    ("shares", "usage", "factors"),
    [
        # no usage yet: every factor is 2^0 = 1
        ({"a": 1, "b": 1}, {}, {"a": 1.0, "b": 1.0}),
        # a used all (U = 1) of a half share (S = ½): 2^(-2) = 0.25; b nothing: 1
        ({"a": 1, "b": 1}, {"a": 100.0}, {"a": 0.25, "b": 1.0}),
        # each used exactly its share: 2^(-1) = 0.5
        ({"a": 3, "b": 1}, {"a": 75.0, "b": 25.0}, {"a": 0.5, "b": 0.5}),
        # b used half with a quarter share: 2^(-0.5/0.25) = 0.25; a half of 3/4: 2^(-2/3)
        ({"a": 3, "b": 1}, {"a": 50.0, "b": 50.0}, {"a": 2 ** (-2 / 3), "b": 0.25}),
    ],
)
def test_the_fair_share_factor(
    shares: dict[str, int], usage: dict[str, float], factors: dict[str, float]
) -> None:
    rows = {name: Decayed(name, gpus, 0.0, 0.0) for name, gpus in usage.items()}
    lines = account_shares(shares, rows, cpu_seconds_weight=0.0)
    assert {name: line.fair_share for name, line in lines.items()} == pytest.approx(factors)


def test_cpu_seconds_count_with_their_weight() -> None:
    rows = {"a": Decayed("a", 0.0, 800.0, 0.0), "b": Decayed("b", 100.0, 0.0, 0.0)}
    shares = {"a": 1, "b": 1}
    unweighted = account_shares(shares, rows, cpu_seconds_weight=0.0)
    assert unweighted["a"].effective_usage == 0.0 and unweighted["b"].effective_usage == 1.0
    weighted = account_shares(shares, rows, cpu_seconds_weight=0.125)  # 800 × ⅛ = 100
    assert weighted["a"].effective_usage == pytest.approx(0.5)


# ---------------------------------------------------------------------------- a real server
def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def share_lines(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    async with http.get(f"{url}/share") as response:
        assert response.status == 200, await response.text()
        return {line["account"]: line for line in await response.json()}


async def test_a_jobs_run_is_charged_to_its_account_and_kept(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as live:
        await live.load_demo_fleet()
        job_id = await submit(
            live, {"command": sleeper(0.5), "replica_count": 2, "resources": {"gpus": 2}}
        )
        done = await wait_for(live, job_id, "completed")
        ran = _seconds(done["end_time"]) - _seconds(done["start_time"])
        line = (await share_lines(live.http, live.url))["default"]
        # 2 workers × 2 GPUs for the time it ran; a week's half-life: decayed by < 1e-5
        assert line["gpu_seconds"] == pytest.approx(4 * ran, rel=1e-4, abs=2e-3)
        assert line["cpu_seconds"] == pytest.approx(2 * ran, rel=1e-4, abs=2e-3)  # 1 per worker
        assert line["effective_usage"] == 1.0 and line["fair_share"] == pytest.approx(0.5)
        async with live.http.delete(f"{live.url}/jobs/{job_id}") as response:
            assert response.status == 202  # seed 002's answer to a delete
        after_delete = (await share_lines(live.http, live.url))["default"]["gpu_seconds"]
        assert after_delete == pytest.approx(4 * ran, rel=1e-4, abs=2e-3)  # deleting forgets none
    async with running_server(tmp_path / "data") as again:  # and a restart neither
        line = (await share_lines(again.http, again.url))["default"]
        assert line["gpu_seconds"] == pytest.approx(4 * ran, rel=1e-4, abs=2e-3)
        assert time.time() - _seconds(done["end_time"]) < WEEK  # so the decay above is tiny


async def test_shares_are_set_per_account_and_seen_as_accounts_may_see(running: Running) -> None:
    async with running.http.post(
        f"{running.url}/accounts", json={"name": "vision", "shares": 3}
    ) as response:
        assert response.status == 201
        assert (await response.json())["data"]["shares"] == 3
    lines = await share_lines(running.http, running.url)
    assert lines["vision"]["raw_shares"] == 3 and lines["default"]["raw_shares"] == 1
    assert lines["vision"]["norm_shares"] == 0.75
    async with running.http.patch(f"{running.url}/accounts/vision", json={"shares": 0}) as response:
        answer = await response.json()
        assert response.status == 400 and answer["error"]["details"]["path"] == "body.shares"
    changed = ok(await cli(running, "accounts", "set-shares", "vision", "1"))
    assert "now has 1 share(s)" in changed
    # a key of vision sees vision's line only; the admin's sees both
    async with running.http.post(
        f"{running.url}/keys", json={"name": "viewer", "scope": "read", "account": "vision"}
    ) as response:
        key = (await response.json())["data"]["api_key"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as viewer:
        assert list(await share_lines(viewer, running.url)) == ["vision"]
    table = as_json(await cli(running, "share", "--output", "json"))
    assert {line["account"]: line["raw_shares"] for line in table} == {"default": 1, "vision": 1}
    text = ok(await cli(running, "share"))
    assert text.splitlines()[0].split()[:3] == ["ACCOUNT", "RAW", "SHARES"]
    assert ADMIN_KEY not in text
