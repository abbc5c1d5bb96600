"""The event outbox and Socket.IO (CONTRACTS §1, §7), against a real aiohttp server on
127.0.0.1:0, a real SQLite file in tmp_path and python-socketio's real client."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from apportion.config import Settings
from apportion.server.auth import Scope, auth_middleware
from apportion.server.events import EventLog, Retention
from apportion.server.http_common import error_middleware
from apportion.server.keys import KeyStore
from apportion.server.routes_status import STATUS, StatusContext, api
from apportion.server.socketio_server import SocketIOBroadcaster, attach, create_socketio
from apportion.server.telemetry import Telemetry
from apportion.store.db import Database

WAIT = 20.0  # generous: no timing assertions, only "it arrives eventually"


@dataclass
class Harness:
    """A running app with the status routes and Socket.IO, and a read key."""

    url: str
    db: Database
    events: EventLog
    keys: KeyStore
    key: str
    telemetry: Telemetry
    sio: socketio.AsyncServer
    data_dir: Path
    http: aiohttp.ClientSession

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@asynccontextmanager
async def harness(tmp_path: Path, *, auth_enabled: bool = True) -> AsyncIterator[Harness]:
    db = await Database.open(f"sqlite:///{tmp_path}/t.db")
    keys = KeyStore(db)
    issued = await keys.create("reader", Scope.READ)
    log = EventLog(db)
    telemetry = Telemetry()
    sio = create_socketio(keys, auth_enabled=auth_enabled, events=log)
    log.add_sink(SocketIOBroadcaster(sio))
    log.add_sink(telemetry.observe_event)
    app = web.Application(
        middlewares=[
            error_middleware,
            auth_middleware(
                keys, enabled=auth_enabled, public_paths=frozenset({"/metrics", "/socket.io/"})
            ),
        ]
    )
    app[STATUS] = StatusContext(
        events=log, telemetry=telemetry, sio=sio, started_at=1_700_000_000.0, data_dir=tmp_path
    )
    app.add_routes(api.routes)
    attach(sio, app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = int(server.sockets[0].getsockname()[1])
    try:
        async with aiohttp.ClientSession() as http:
            yield Harness(
                f"http://127.0.0.1:{port}", db, log, keys, issued.secret, telemetry, sio,
                tmp_path, http,
            )  # fmt: skip
    finally:
        await log.close()
        await runner.cleanup()
        await db.close()


@dataclass
class Listener:
    """A Socket.IO client that records every event it receives, in arrival order."""

    client: socketio.AsyncClient
    received: list[tuple[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, name: str | None = None) -> list[Any]:
        """Payloads of the first ``count`` events (named ``name`` if given)."""

        async def enough() -> list[Any]:
            while True:
                got = [data for (n, data) in self.received if name is None or n == name]
                if len(got) >= count:
                    return got[:count]
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(enough(), WAIT)


@asynccontextmanager
async def listener(url: str, auth: dict[str, str] | None) -> AsyncIterator[Listener]:
    client = socketio.AsyncClient(reconnection=False)
    got = Listener(client)

    async def any_event(event: str, data: Any) -> None:
        got.received.append((event, data))
        got.changed.set()

    client.on("*", any_event)
    await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=WAIT)
    try:
        yield got
    finally:
        await client.disconnect()


def parse_ts(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    assert ts.tzinfo is not None and ts.utcoffset() == UTC.utcoffset(ts)
    return ts


async def test_append_stores_then_emits_in_seq_order(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, listener(h.url, {"token": h.key}) as client:
        first = await h.events.append("job_queued", {"job_id": "j1", "priority": 0})
        second = await h.events.append("job_started", {"job_id": "j1", "resources": {"gpus": 2}})
        got = await client.wait_for(2)
        assert [e["seq"] for e in got] == [first["seq"], second["seq"]]
        assert second["seq"] > first["seq"]
        assert [name for name, _ in client.received[:2]] == ["job_queued", "job_started"]
        assert got[0] == first and got[1]["resources"] == {"gpus": 2}
        for event in got:
            parse_ts(event["ts"])
        # stored: the log returns exactly what was emitted
        assert await h.events.since(0) == [first, second]
        assert await h.events.latest_seq() == second["seq"]


async def test_concurrent_appends_are_emitted_in_seq_order(tmp_path: Path) -> None:
    seen_by_sink: list[int] = []

    async def record(event: dict[str, Any]) -> None:
        seen_by_sink.append(event["seq"])
        await asyncio.sleep(0)  # a sink that yields must not let a later event overtake

    async with harness(tmp_path) as h, listener(h.url, {"token": h.key}) as client:
        h.events.add_sink(record)
        count = 60
        results = await asyncio.gather(
            *(h.events.append("metrics_updated", {"n": i}) for i in range(count))
        )
        seqs = [r["seq"] for r in results]
        assert len(set(seqs)) == count
        # gather keeps call order, and the outbox assigns seq in append order
        assert seqs == sorted(seqs)
        assert [r["n"] for r in results] == list(range(count))
        assert seen_by_sink == seqs
        got = await client.wait_for(count)
        assert [e["seq"] for e in got] == seqs


async def test_concurrent_appends_share_transactions(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await Database.open(store_url)
    transactions: list[int] = []
    write_batch = db.write_batch

    async def counting(fn: Any) -> Any:
        transactions.append(1)
        return await write_batch(fn)

    monkeypatch.setattr(db, "write_batch", counting)
    try:
        log = EventLog(db)
        results = await asyncio.gather(*(log.append("x", {"n": i}) for i in range(40)))
        # 40 appends handed over before the first commit ran: one transaction
        assert len(transactions) == 1
        assert [r["seq"] for r in results] == list(range(1, 41))
        assert [e["n"] for e in await log.since(0)] == list(range(40))
    finally:
        await db.close()


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["a", "b", "c"]), max_size=30),
    since=st.integers(min_value=0, max_value=35),
    limit=st.integers(min_value=1, max_value=40),
    types=st.none() | st.sets(st.sampled_from(["a", "b", "c", "zz"])),
)
async def test_since_matches_a_model(
    kinds: list[str], since: int, limit: int, types: set[str] | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(f"sqlite:///{tmp}/t.db")
        try:
            log = EventLog(db)
            stored = [await log.append(kind, {"i": i}) for i, kind in enumerate(kinds)]
            model = [
                e for e in stored if e["seq"] > since and (types is None or e["type"] in types)
            ][:limit]
            assert await log.since(since, limit=limit, types=types) == model
            assert await log.latest_seq() == len(kinds)
        finally:
            await db.close()


@pytest.mark.parametrize(
    ("since", "limit", "types", "expected_ns"),
    [
        # 6 events n=0..5 get seq 1..6; types alternate a, b, a, b, a, b
        (0, 1000, None, [0, 1, 2, 3, 4, 5]),
        (3, 1000, None, [3, 4, 5]),  # seq > 3 → seqs 4, 5, 6 → n 3, 4, 5
        (6, 1000, None, []),  # nothing after the newest
        (1, 2, None, [1, 2]),  # seqs 2, 3 (limit 2)
        (0, 1000, ["b"], [1, 3, 5]),
        (2, 1000, ["a"], [2, 4]),  # seqs > 2 with type a: 3, 5 → n 2, 4
        (0, 1000, [], []),  # an empty type filter matches nothing
        (0, 1000, ["a", "b"], [0, 1, 2, 3, 4, 5]),
    ],
)
async def test_since_returns_exactly_what_came_after(
    store_url: str, since: int, limit: int, types: list[str] | None, expected_ns: list[int]
) -> None:
    db = await Database.open(store_url)
    try:
        log = EventLog(db)
        appended = [await log.append("ab"[n % 2], {"n": n}) for n in range(6)]
        assert [e["seq"] for e in appended] == [1, 2, 3, 4, 5, 6]
        got = await log.since(since, limit=limit, types=types)
        assert [e["n"] for e in got] == expected_ns
        assert all(e["seq"] > since for e in got)
    finally:
        await db.close()


async def test_bad_arguments_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/t.db")
    try:
        log = EventLog(db)
        for reserved in ("seq", "ts", "type"):
            with pytest.raises(ValueError, match="reserved"):
                await log.append("job_queued", {reserved: 1, "job_id": "j"})
        with pytest.raises(ValueError, match="event type"):
            await log.append("", {})
        with pytest.raises(TypeError):
            await log.append("job_queued", {"job_id": object()})
        assert await log.latest_seq() == 0
        with pytest.raises(ValueError, match="since"):
            await log.since(-1)
        with pytest.raises(ValueError, match="limit"):
            await log.since(0, limit=0)
    finally:
        await db.close()


async def test_a_failing_sink_is_logged_and_the_others_still_hear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[int] = []

    async def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("sink exploded")

    async def good(event: dict[str, Any]) -> None:
        heard.append(event["seq"])

    db = await Database.open(f"sqlite:///{tmp_path}/t.db")
    try:
        log = EventLog(db)
        log.add_sink(broken)
        log.add_sink(good)
        with caplog.at_level(logging.ERROR, logger="apportion.server.events"):
            event = await log.append("cluster_updated", {"cluster_id": "c1"})
        assert heard == [event["seq"]]
        assert "sink" in caplog.text and "sink exploded" in caplog.text
        assert await log.since(0) == [event]
    finally:
        await db.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_prune_by_age_and_count_keeps_the_newest_event(store_url: str) -> None:
    db = await Database.open(store_url)
    clock = Clock()
    log = EventLog(db, clock=clock)
    try:
        for n in range(6):  # seqs 1..6 at t = 0, 10, …, 50 (relative)
            await log.append("x", {"n": n})
            clock.now += 10
        # now = start + 60; older than 25 s: seqs 1..4 (ages 60..30) go; 5, 6 (20, 10) stay
        assert await log.prune(keep=100, max_age_seconds=25) == 4
        assert [e["seq"] for e in await log.since(0)] == [5, 6]
        # by count, the newest 1 stays
        assert await log.prune(keep=1) == 1
        clock.now += 3600  # everything is old now, but the newest event anchors seq
        assert await log.prune(keep=100, max_age_seconds=25) == 0
        assert [e["seq"] for e in await log.since(0)] == [6]
        assert (await log.append("x", {"n": 6}))["seq"] == 7
    finally:
        await db.close()


async def test_since_older_than_what_is_kept_answers_from_the_oldest_kept(
    store_url: str,
) -> None:
    db = await Database.open(store_url)
    log = EventLog(db)
    try:
        for n in range(10):
            await log.append("x", {"n": n})
        await log.prune(keep=3)  # 8, 9, 10 stay
        # a client that saw up to seq 2 gets what is kept; the jump from 2 to 8 shows the gap
        assert [e["seq"] for e in await log.since(2)] == [8, 9, 10]
        assert [e["seq"] for e in await log.since(8)] == [9, 10]  # kept events as before
        assert await log.latest_seq() == 10
    finally:
        await db.close()


async def test_the_prune_loop_prunes_every_interval_and_survives_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/t.db")
    log = EventLog(db)
    ticks: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    slept: list[float] = []

    async def gated_sleep(seconds: float) -> None:
        """Each sleep waits until the test lets it end: one prune per tick."""
        slept.append(seconds)
        tick: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await ticks.put(tick)
        await tick

    retention = Retention(max_age_seconds=86400, max_events=2, interval_seconds=600)
    loop = asyncio.create_task(log.prune_forever(retention, sleep=gated_sleep))
    try:
        for n in range(5):
            await log.append("x", {"n": n})
        (await ticks.get()).set_result(None)  # first interval ends: prune to 2 events
        tick = await ticks.get()  # the loop sleeps again: the prune is done
        assert [e["seq"] for e in await log.since(0)] == [4, 5]

        real_prune = log.prune

        async def failing(**kwargs: Any) -> int:
            raise OSError("disk I/O error")

        monkeypatch.setattr(log, "prune", failing)
        tick.set_result(None)  # this prune fails, is logged, and the loop sleeps again
        tick = await ticks.get()
        monkeypatch.setattr(log, "prune", real_prune)
        await log.append("x", {"n": 5})
        tick.set_result(None)
        await ticks.get()
        assert [e["seq"] for e in await log.since(0)] == [5, 6]
        assert slept == [600, 600, 600, 600]
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        await db.close()


def test_retention_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPORTION_EVENT_RETENTION_DAYS", "1.5")
    monkeypatch.setenv("APPORTION_EVENT_RETENTION_COUNT", "500")
    settings = Settings()
    assert (settings.event_retention_days, settings.event_retention_count) == (1.5, 500)
    monkeypatch.setenv("APPORTION_EVENT_RETENTION_COUNT", "0")  # the newest must stay
    with pytest.raises(ValidationError):
        Settings()


async def test_seq_survives_restart_and_prune(store_url: str) -> None:
    db = await Database.open(store_url)
    log = EventLog(db)
    for n in range(10):
        await log.append("policy_updated", {"n": n})
    # keep the newest 4 of seqs 1..10 → 6 deleted, 7..10 stay
    assert await log.prune(keep=4) == 6
    assert [e["seq"] for e in await log.since(0)] == [7, 8, 9, 10]
    assert await log.prune(keep=4) == 0
    with pytest.raises(ValueError, match="keep"):
        await log.prune(keep=0)
    await db.close()

    db = await Database.open(store_url)
    try:
        log = EventLog(db)
        assert await log.latest_seq() == 10
        after = await log.append("policy_updated", {"n": 10})
        assert after["seq"] == 11
    finally:
        await db.close()


async def assert_refused(url: str, auth: dict[str, Any] | None) -> None:
    """connect raises, and the server's reason (sent as connect_error) says Unauthorized."""
    client = socketio.AsyncClient(reconnection=False)
    reasons: list[Any] = []

    async def on_error(data: Any) -> None:
        reasons.append(data)

    client.on("connect_error", on_error)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=WAIT)
    assert not client.connected
    assert len(reasons) == 1, reasons
    assert reasons[0]["message"].startswith("Unauthorized: ")
    assert "token" in reasons[0]["message"] or "API key" in reasons[0]["message"]
    assert reasons[0]["data"] == {"code": "Unauthorized"}
    await client.disconnect()


@pytest.mark.parametrize(
    "auth",
    [None, {}, {"token": ""}, {"token": "apn_wrong_key"}, {"token": 42}],
    ids=["no-auth", "empty", "blank-token", "wrong-token", "non-string"],
)
async def test_connect_without_a_valid_key_is_refused(
    tmp_path: Path, auth: dict[str, Any] | None
) -> None:
    async with harness(tmp_path) as h:
        await assert_refused(h.url, auth)


async def test_a_revoked_key_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        issued = await h.keys.create("short-lived", Scope.READ)
        async with listener(h.url, {"token": issued.secret}) as client:
            assert client.client.connected
        assert await h.keys.revoke(issued.key_id)
        await assert_refused(h.url, {"token": issued.secret})


async def test_auth_disabled_accepts_anyone(tmp_path: Path) -> None:
    async with harness(tmp_path, auth_enabled=False) as h, listener(h.url, None) as client:
        sent = await h.events.append("job_queued", {"job_id": "j9"})
        assert await client.wait_for(1) == [sent]


async def test_reconnect_and_resync_with_subscribe(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        async with listener(h.url, {"token": h.key}) as client:
            await h.events.append("job_queued", {"job_id": "a"})
            last_seq = (await client.wait_for(1))[0]["seq"]
        missed = [await h.events.append("job_queued", {"job_id": f"m{i}"}) for i in range(3)]
        async with listener(h.url, {"token": h.key}) as client:
            ack = await client.client.call("subscribe", {"since": last_seq}, timeout=WAIT)
            assert ack == {"success": True, "count": 3, "more": False}
            (replay,) = await client.wait_for(1, "events_replay")
            assert replay["events"] == missed
            assert replay["latest_seq"] == missed[-1]["seq"]
            assert replay["more"] is False
            # and live events keep flowing after the replay
            live = await h.events.append("job_started", {"job_id": "m0"})
            assert await client.wait_for(1, "job_started") == [live]


async def test_subscribe_pages_with_more_and_refuses_bad_since(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sent = [await h.events.append("metrics_updated", {"n": n}) for n in range(5)]
        async with listener(h.url, {"token": h.key}) as client:
            ack = await client.client.call("subscribe", {"since": 0, "limit": 2}, timeout=WAIT)
            assert ack == {"success": True, "count": 2, "more": True}
            (page,) = await client.wait_for(1, "events_replay")
            assert page["events"] == sent[:2]
            for bad in ({"since": -1}, {"since": "x"}, {"since": True}, [1]):
                ack = await client.client.call("subscribe", bad, timeout=WAIT)
                assert ack["success"] is False
                assert ack["error"]["code"] == "InvalidRequest"
                assert ack["error"]["details"]["path"].startswith("subscribe")
            # a refused subscribe emits nothing
            assert len([n for n, _ in client.received if n == "events_replay"]) == 1


async def test_events_are_counted_by_telemetry(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for _ in range(3):
            await h.events.append("job_queued", {"job_id": "j"})
        await h.events.append("job_completed", {"job_id": "j"})
        events = h.telemetry.events
        assert events.labels(type="job_queued")._value.get() == 3
        assert events.labels(type="job_completed")._value.get() == 1


async def test_each_key_gets_only_the_fleets_events_and_its_own_accounts(
    tmp_path: Path,
) -> None:
    # Before accounts, Socket.IO and GET /events gave every key every tenant's job names and
    # allocations, while REST hid them.
    async with harness(tmp_path) as h:
        secrets = {
            "a": (await h.keys.create("alice", Scope.READ, account="team-a")).secret,
            "b": (await h.keys.create("bob", Scope.SUBMIT, account="team-b")).secret,
            "operator": (await h.keys.create("ops", Scope.OPERATOR, account="team-b")).secret,
        }
        async with (
            listener(h.url, {"token": secrets["a"]}) as seen_by_a,
            listener(h.url, {"token": secrets["b"]}) as seen_by_b,
            listener(h.url, {"token": secrets["operator"]}) as seen_by_operator,
        ):
            a = await h.events.append("job_queued", {"name": "a-secret"}, account="team-a")
            b = await h.events.append("job_queued", {"name": "b-secret"}, account="team-b")
            fleet = await h.events.append("cluster_updated", {"cluster_id": "c1"})
            assert (a["account"], b["account"], "account" in fleet) == ("team-a", "team-b", False)
            # events are emitted in seq order: once the fleet's arrived, the others had
            assert await seen_by_a.wait_for(2) == [a, fleet]
            assert await seen_by_b.wait_for(2) == [b, fleet]
            assert await seen_by_operator.wait_for(3) == [a, b, fleet]
            assert len(seen_by_a.received) == len(seen_by_b.received) == 2

            ack = await seen_by_a.client.call("subscribe", {"since": 0}, timeout=WAIT)
            assert ack == {"success": True, "count": 2, "more": False}
            (replay,) = await seen_by_a.wait_for(1, "events_replay")
            assert replay["events"] == [a, fleet]

        for who, expected in [("a", [a, fleet]), ("b", [b, fleet]), ("operator", [a, b, fleet])]:
            headers = {"Authorization": f"Bearer {secrets[who]}"}
            async with h.http.get(f"{h.url}/events?since=0", headers=headers) as response:
                page = await response.json()
            assert page["data"] == expected, who
            assert page["next_since"] == fleet["seq"]


async def test_account_is_a_reserved_payload_key(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        with pytest.raises(ValueError, match="account"):
            await h.events.append("job_queued", {"account": "team-b"}, account="team-a")
        assert await h.events.since(0) == []
