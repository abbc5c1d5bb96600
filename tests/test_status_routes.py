"""Seed 001's status routes over real HTTP: /events, /metrics, /resources, /system/status."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apportion import __version__
from apportion.server.telemetry import Telemetry
from tests.test_events import WAIT, Harness, harness, listener


async def get(h: Harness, path: str, *, auth: bool = True) -> tuple[int, Any]:
    async with h.http.get(f"{h.url}{path}", headers=h.auth if auth else {}) as r:
        return r.status, await r.json()


async def test_events_since_over_http(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sent = [await h.events.append("ab"[n % 2], {"n": n}) for n in range(5)]
        # seqs 1..5, types a b a b a
        status, body = await get(h, "/events?since=2")
        assert status == 200 and body["success"] is True
        assert body["data"] == sent[2:]
        assert body["latest_seq"] == 5 and body["next_since"] == 5

        # a full page: the cursor is the last seq returned (3), not the newest (5)
        status, body = await get(h, "/events?since=1&limit=2")
        assert [e["seq"] for e in body["data"]] == [2, 3]
        assert body["next_since"] == 3 and body["latest_seq"] == 5

        # type filter, repeated or comma-separated; nothing matching still advances the cursor
        status, body = await get(h, "/events?type=b")
        assert [e["n"] for e in body["data"]] == [1, 3]
        status, body = await get(h, "/events?type=a&type=b&since=3")
        assert [e["n"] for e in body["data"]] == [3, 4]
        status, body = await get(h, "/events?type=nothing,none")
        assert body["data"] == [] and body["next_since"] == 5

        status, body = await get(h, "/events")  # since defaults to 0
        assert body["data"] == sent


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=abc", "since"),
        ("since=-1", "since"),
        ("since=1.5", "since"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=x", "limit"),
    ],
)
async def test_events_bad_parameters_are_400(tmp_path: Path, query: str, param: str) -> None:
    async with harness(tmp_path) as h:
        status, body = await get(h, f"/events?{query}")
        assert status == 400
        assert body["error"]["code"] == "InvalidRequest"
        assert body["error"]["details"]["path"] == f"query.{param}"
        assert repr(param) in body["message"]


async def test_status_routes_need_a_key_but_metrics_does_not(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for path in ("/events", "/resources", "/system/status"):
            status, body = await get(h, path, auth=False)
            assert status == 401, path
            assert body["error"]["code"] == "Unauthorized"
        async with h.http.get(f"{h.url}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text body, by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_expose_names_and_values(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        t = h.telemetry
        t.allocations.labels(policy="binpack:1.0-stable", outcome="success").inc(3)
        t.allocations.labels(policy="binpack:1.0-stable", outcome="NoFeasiblePlacement").inc()
        t.policy_latency.labels(policy="binpack:1.0-stable").observe(0.003)
        t.policy_latency.labels(policy="binpack:1.0-stable").observe(0.2)
        t.queue_depth.labels(queue="default").set(7)
        t.jobs_running.labels(queue="default").set(2)
        t.admissions.labels(queue="default").inc(4)
        t.dispatches.labels(adapter="local", outcome="success").inc(2)
        gpu_reads: list[int] = []

        def gpus() -> tuple[int, int, int]:
            gpu_reads.append(1)
            return (3, 13, 16)  # held + free = total

        t.set_gpu_source(gpus)
        await h.events.append("job_queued", {"job_id": "j"})
        await h.events.append("job_queued", {"job_id": "k"})

        async with h.http.get(f"{h.url}/metrics") as r:
            text = await r.text()
        got = samples(text)
        pol = ("policy", "binpack:1.0-stable")
        assert got[("apportion_allocations_total", (("outcome", "success"), pol))] == 3
        assert got[("apportion_allocations_total", (("outcome", "NoFeasiblePlacement"), pol))] == 1
        assert got[("apportion_policy_latency_seconds_count", (pol,))] == 2
        # buckets are cumulative: 0.003 ≤ 0.005, 0.2 ≤ 0.25
        assert got[("apportion_policy_latency_seconds_bucket", (("le", "0.005"), pol))] == 1
        assert got[("apportion_policy_latency_seconds_bucket", (("le", "0.25"), pol))] == 2
        assert got[("apportion_policy_latency_seconds_sum", (pol,))] == pytest.approx(0.203)
        assert got[("apportion_queue_depth", (("queue", "default"),))] == 7
        assert got[("apportion_jobs_running", (("queue", "default"),))] == 2
        assert got[("apportion_admissions_total", (("queue", "default"),))] == 4
        adapter = (("adapter", "local"), ("outcome", "success"))
        assert got[("apportion_dispatches_total", adapter)] == 2
        assert got[("apportion_gpus", (("state", "held"),))] == 3
        assert got[("apportion_gpus", (("state", "free"),))] == 13
        assert got[("apportion_gpus", (("state", "total"),))] == 16
        assert got[("apportion_events_total", (("type", "job_queued"),))] == 2
        assert gpu_reads == [1]  # read at render time, once per scrape


async def test_each_telemetry_has_its_own_registry() -> None:
    one, two = Telemetry(), Telemetry()
    one.admissions.labels(queue="q").inc(5)
    two.admissions.labels(queue="q").inc(1)
    key = ("apportion_admissions_total", (("queue", "q"),))
    assert samples(one.render()[0].decode())[key] == 5
    assert samples(two.render()[0].decode())[key] == 1


async def test_a_failing_gpu_source_keeps_metrics_up(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()
    calls: list[str] = []

    def flaky() -> tuple[int, int, int]:
        calls.append("read")
        if len(calls) == 2:
            raise RuntimeError("fleet unavailable")
        return (1, 7, 8)

    telemetry.set_gpu_source(flaky)
    held = ("apportion_gpus", (("state", "held"),))
    body, content_type = telemetry.render()
    assert content_type.startswith("text/plain")
    assert samples(body.decode())[held] == 1
    with caplog.at_level(logging.ERROR, logger="apportion.server.telemetry"):
        body, _ = telemetry.render()  # the source raises: logged, last values kept
    assert "fleet unavailable" in caplog.text
    assert samples(body.decode())[held] == 1
    assert calls == ["read", "read"]


async def test_resources_shape(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        status, body = await get(h, "/resources")
        assert status == 200
        assert body["cpu_count"] == os.cpu_count()
        assert 0.0 <= body["cpu_percent"] <= 100.0
        assert body["memory_total_mb"] > 0
        assert 0 < body["memory_available_mb"] <= body["memory_total_mb"]
        assert 0.0 <= body["memory_percent"] <= 100.0
        # seed 001's key: the available memory again, in GB (1 GB = 1024 MB)
        assert body["memory_free_gb"] == pytest.approx(body["memory_available_mb"] / 1024, abs=0.01)
        disk = body["disk"]
        assert disk["path"] == str(tmp_path)
        assert 0 < disk["free_mb"] <= disk["total_mb"]
        assert set(body["load_average"]) == {"1m", "5m", "15m"}
        assert body["load_average"]["1m"] == pytest.approx(os.getloadavg()[0], abs=50)


async def test_system_status_counts_socketio_clients_and_events(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        status, body = await get(h, "/system/status")
        assert status == 200
        assert body["status"] == "ok" and body["version"] == __version__
        # the harness says the server started at 1_700_000_000 (2023-11-14T22:13:20Z)
        assert body["started_at"] == "2023-11-14T22:13:20+00:00"
        assert body["uptime_seconds"] > 0
        assert body["socketio_clients"] == 0 and body["latest_event_seq"] == 0
        assert body["role"] == "sole"  # SQLite: the only server of its database

        async with listener(h.url, {"token": h.key}):
            await h.events.append("job_queued", {"job_id": "j"})
            await h.events.append("job_started", {"job_id": "j"})
            status, body = await get(h, "/system/status")
            assert body["socketio_clients"] == 1
            assert body["latest_event_seq"] == 2

        # the server learns of the disconnect asynchronously: poll the route until it does
        counts = []
        for _attempt in range(int(WAIT / 0.05)):
            counts.append((await get(h, "/system/status"))[1]["socketio_clients"])
            if counts[-1] == 0:
                break
            await asyncio.sleep(0.05)
        assert counts[-1] == 0, counts


async def test_routes_have_one_line_docstrings() -> None:
    from apportion.server.routes_status import api

    for spec in api.specs:
        doc = spec.handler.__doc__
        assert doc, spec.path
        assert len(doc.strip().splitlines()) == 1
