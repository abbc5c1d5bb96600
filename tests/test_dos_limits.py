"""No denial of service from one key, or from none (issue 9 item 5), over real ports on 127.0.0.1.

* ``/metrics`` labels only policies the store knows; made-up names are counted as ``unknown``.
* ``/metrics`` is rendered off the event loop: a scrape cannot hold up an allocation answer.
* Idle connections without a key, and request heads that trickle (slowloris), are closed.
* Connections past ``max_connections`` are refused while an authenticated client is answered.
* Accept errors (EMFILE) are logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import apportion.server.telemetry as telemetry_module
from apportion.server import dashboard
from apportion.server.dashboard import OneTimeTokens
from tests.conftest import ADMIN_KEY, Running, allocation, ask, running_server

GUARD_SECONDS = 30.0
"""A bound on waits that must end on their own: reaching it is the failure, never the pass."""

UNKNOWN_NAMES = 300


async def test_unknown_policy_names_are_counted_as_unknown(running: Running, fleet: Any) -> None:
    # before: every made-up URI became a label value (20,000 names grew /metrics to 104 MB)
    async with running.ws() as ws:
        for index in range(UNKNOWN_NAMES):
            answer = await ask(ws, allocation(policy_rule_uri=f"made-up-{index}:1.0-x"))
            assert answer["error"]["code"] == "UnknownPolicy"
        assert (await ask(ws, allocation()))["success"] is True
    async with running.http.get(f"{running.url}/metrics") as response:
        text = await response.text()
    assert "made-up-" not in text
    unknown = 'apportion_allocations_total{outcome="UnknownPolicy",policy="unknown"}'
    assert f"{unknown} {float(UNKNOWN_NAMES)}" in text
    assert 'apportion_allocations_total{outcome="success",policy="binpack:1.0-stable"} 1.0' in text
    # one label value for all of them: the exposition did not grow by a line per name
    assert len(re.findall(r'policy="', text)) < 40, len(re.findall(r'policy="', text))


async def test_a_scrape_does_not_block_an_allocation_answer(
    running: Running, fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: the exposition was rendered on the event loop; a slow one froze every port
    entered, release = threading.Event(), threading.Event()
    waited: list[bool] = []
    real = telemetry_module.generate_latest

    def slow_render(registry: CollectorRegistry) -> bytes:
        entered.set()
        waited.append(release.wait(GUARD_SECONDS))  # held until the allocation was answered
        return real(registry)

    monkeypatch.setattr(telemetry_module, "generate_latest", slow_render)
    async with running.ws() as ws:
        scrape = asyncio.create_task(running.http.get(f"{running.url}/metrics"))
        assert await asyncio.to_thread(entered.wait, GUARD_SECONDS)
        answer = await ask(ws, allocation(request_id="during-scrape"))
        assert answer["success"] is True and answer["request_id"] == "during-scrape"
        assert not scrape.done()  # the scrape is still being rendered: the answer came first
        release.set()
        response = await scrape
        assert response.status == 200 and "apportion_gpus" in await response.text()
        response.release()
    assert waited == [True]  # the render was released by the test, not by the guard


@pytest.fixture
async def tight(tmp_path: Path) -> AsyncIterator[Running]:
    """A server with small limits: 0.5 s to send a request head or a handshake, 3 connections
    per port."""
    async with running_server(
        tmp_path / "data",
        idle_timeout_seconds=0.5,
        header_timeout_seconds=0.5,
        max_connections=3,
    ) as live:
        yield live


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (b"" when nothing)."""
    try:
        return await asyncio.wait_for(reader.read(), GUARD_SECONDS)
    except ConnectionResetError:
        return b""


@pytest.mark.parametrize("port", ["http", "ws"])
async def test_an_idle_connection_without_a_key_is_closed(tight: Running, port: str) -> None:
    # before: the HTTP port kept a silent connection for an hour (aiohttp's keep-alive default)
    number = tight.server.http_port if port == "http" else tight.server.ws_port
    reader, writer = await asyncio.open_connection("127.0.0.1", number)
    try:
        assert await _closed_by_server(reader) == b""  # closed, without an answer
    finally:
        writer.close()


@pytest.mark.parametrize("port", ["http", "ws"])
async def test_a_slowloris_request_head_is_cut_off(tight: Running, port: str) -> None:
    # a client that trickles one header byte at a time never completes its request head
    number = tight.server.http_port if port == "http" else tight.server.ws_port
    reader, writer = await asyncio.open_connection("127.0.0.1", number)
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: "
    writer.write(head)
    cut = asyncio.create_task(_closed_by_server(reader))
    try:
        for _byte in range(int(GUARD_SECONDS / 0.05)):  # the attack's own pace
            if cut.done():
                break
            try:
                writer.write(b"a")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.05)
        assert await cut == b""  # cut off before the head was complete: nothing answered
    finally:
        writer.close()


async def test_connections_past_the_cap_are_refused_and_a_client_is_still_answered(
    tight: Running,
) -> None:
    # before: 20,000 idle connections without a key exhausted the server's file descriptors
    await tight.load_demo_fleet()
    async with tight.ws() as ws:  # one of 3 on the WebSocket port, authenticated
        async with tight.http.get(f"{tight.url}/system/status") as response:  # one of 3 on HTTP
            assert response.status == 200  # with the key: its connection keeps its place
        opened = []
        for _index in range(2):  # fills the WebSocket port up to its cap
            opened.append(await asyncio.open_connection("127.0.0.1", tight.server.ws_port))
        reader, writer = await asyncio.open_connection("127.0.0.1", tight.server.ws_port)
        assert await _closed_by_server(reader) == b""  # the 4th: refused unread
        writer.close()
        # on the HTTP port a newcomer takes the place of the oldest connection that never
        # authenticated: the anonymous ones cannot keep a client with a key out
        anonymous = [
            await asyncio.open_connection("127.0.0.1", tight.server.http_port) for _ in range(2)
        ]
        newcomer = await asyncio.open_connection("127.0.0.1", tight.server.http_port)
        assert await _closed_by_server(anonymous[0][0]) == b""  # the oldest: closed unread
        opened += [anonymous[1], newcomer]
        gate = tight.server.http_gate
        assert gate is not None and (gate.refused, gate.evicted) == (0, 1)
        answer = await ask(ws, allocation(request_id="still-answered"))
        assert answer["success"] is True and answer["request_id"] == "still-answered"
        async with tight.http.get(f"{tight.url}/system/status") as response:
            assert response.status == 200  # its connection is one of the 3 (or idled out)
        for _reader, writer in opened:
            writer.close()


def test_accept_errors_are_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    # asyncio reports each failed accept (EMFILE) through the loop's exception handler
    from apportion.server.limits import ACCEPT_ERROR_MESSAGE, BoundedLog, accept_error_handler

    now = [0.0]
    bounded = BoundedLog(logging.getLogger("apportion.server.limits"), clock=lambda: now[0])
    others: list[dict[str, Any]] = []
    handle = accept_error_handler(lambda _loop, context: others.append(context), bounded)
    loop = asyncio.new_event_loop()
    emfile = {"message": ACCEPT_ERROR_MESSAGE, "exception": OSError(errno.EMFILE, "Too many")}
    try:
        with caplog.at_level(logging.WARNING, logger="apportion.server.limits"):
            for _attempt in range(1000):
                handle(loop, emfile)
            now[0] += 11.0  # past the 10 s interval
            handle(loop, emfile)
            handle(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "Too many" in lines[0] and "999 more like this" in lines[1]
    assert others == [{"message": "something else"}]  # other errors go to the previous handler


async def _send_slowly(writer: asyncio.StreamWriter, cut: asyncio.Task[bytes]) -> None:
    """Trickle a body a byte every 0.05 s until the server has answered and closed (bounded)."""
    for _byte in range(int(GUARD_SECONDS / 0.05)):
        if cut.done():
            return
        try:
            writer.write(b"x")
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.05)


async def test_a_trickled_body_is_cut_off_with_408(tmp_path: Path) -> None:
    # before: 1,030 connections sending 100 KB bodies a byte every few seconds held the
    # connection cap for 45 s; a body now has a deadline (its base plus its size at a rate)
    async with running_server(
        tmp_path / "data", body_timeout_seconds=0.5, body_min_bytes_per_second=1_000_000
    ) as live:
        reader, writer = await asyncio.open_connection("127.0.0.1", live.server.http_port)
        head = (
            "POST /clusters/query HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        writer.write(head.encode())
        cut = asyncio.create_task(_closed_by_server(reader))
        try:
            await _send_slowly(writer, cut)
            answer = await cut
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"RequestTimeout"' in answer and b"did not arrive within" in answer


async def test_a_refused_request_is_answered_without_waiting_for_its_body(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the public sign-in with no link outstanding, and a request with a wrong key: each is
    # refused (and its connection closed) before a byte of its 100 KB body is read
    monkeypatch.setattr(dashboard, "ONE_TIME_TOKENS", OneTimeTokens())  # none outstanding
    for path, key in (("/auth/one-time", None), ("/clusters/query", "not-a-key-0123456789")):
        reader, writer = await asyncio.open_connection("127.0.0.1", running.server.http_port)
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        writer.write(head.encode())
        try:
            answer = await _closed_by_server(reader)  # no body sent: a wait would hang here
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 401 "), (path, answer[:200])
