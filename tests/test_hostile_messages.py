"""Every message of the hostile corpus gets its documented code, and the connection stays usable."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from apportion.server.dashboard import issue_one_time_link
from tests.conftest import ADMIN_KEY, Running, allocation, ask

CORPUS = json.loads((Path(__file__).parent / "hostile" / "messages.json").read_text())


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
async def test_hostile_message(running: Running, fleet: Any, case: dict[str, Any]) -> None:
    raw = case["raw"] if "raw" in case else json.dumps(case["message"])
    async with running.ws() as ws:
        answer = await ask(ws, raw)
        assert answer["success"] is False
        assert answer["error"]["code"] == case["code"], answer
        assert len(answer["message"]) > 10
        if "path" in case:
            assert answer["error"]["details"].get("path") == case["path"], answer
        # the same connection still answers a good request
        follow_up = await ask(ws, allocation(request_id="after"))
        assert follow_up["success"] is True and follow_up["request_id"] == "after"


async def test_corpus_covers_every_protocol_error_code_a_client_can_cause() -> None:
    codes = {case["code"] for case in CORPUS}
    assert {"InvalidJSON", "InvalidRequest", "UnknownPolicy", "UnknownAllocation"} <= codes


# --- the small ones of issue 9 item 6: each answered 500 before, a 4xx now ---------------------


async def _raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` as-is on a new connection; the status line and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_a_non_ascii_one_time_token_is_refused_not_a_500(running: Running) -> None:
    issue_one_time_link(running.url)  # hmac.compare_digest raised TypeError on 'é' against it
    async with running.http.post(f"{running.url}/auth/one-time", json={"token": "é" * 43}) as r:
        body = await r.json()
        assert r.status == 401, body
    assert body["error"]["code"] == "Unauthorized"


async def test_a_nul_in_a_multipart_part_header_is_a_400(running: Running) -> None:
    body = b'--XX\r\nContent-Disposition: form-data; name="rec\x00ord"\r\n\r\n{}\r\n--XX--\r\n'
    head = (
        f"POST /policies HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=XX\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await _raw_http(running.server.http_port, head + body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


async def test_a_multipart_upload_without_a_boundary_is_a_400(running: Running) -> None:
    # aiohttp's reader raised ValueError("boundary missed"): a 500 (issue 21, item 8)
    headers = {"Content-Type": "multipart/form-data"}
    async with running.http.post(f"{running.url}/policies", data=b"--x--", headers=headers) as r:
        body = await r.json()
        assert r.status == 400, body
    assert body["error"]["details"]["path"] == "body" and "boundary" in body["message"]


async def test_the_websocket_port_logs_no_line_per_connection(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    # before, each connection (refused or not) was an INFO line of the websockets library: an
    # anonymous flood of handshakes became a flood of the log (issue 21, item 8)
    caplog.set_level(logging.INFO)
    request = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer not-a-key-0123456789\r\n\r\n"
    )
    for _ in range(20):
        answer = await _raw_http(running.server.ws_port, request)
        assert answer.startswith(b"HTTP/1.1 401 "), answer
    async with running.ws() as ws:  # and an accepted one
        assert (await ask(ws, allocation()))["error"]["code"] == "NoFeasiblePlacement"
    lines = [r for r in caplog.records if r.name.startswith(("websockets", "apportion.server.ws"))]
    assert lines == [], [r.getMessage() for r in lines]


async def test_a_nul_in_a_static_path_is_a_404(running: Running) -> None:
    request = b"GET /static/app%00.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = await _raw_http(running.server.http_port, request)
    assert answer.startswith(b"HTTP/1.1 404 "), answer


@pytest.mark.parametrize("port", ["ws", "http"])
async def test_two_authorization_headers_are_refused_with_a_401(
    running: Running, port: str
) -> None:
    # which key would act is ambiguous: the WebSocket handshake raised MultipleValuesError (500)
    number = running.server.ws_port if port == "ws" else running.server.http_port
    path = "/" if port == "ws" else "/system/status"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nAuthorization: Bearer someone-else\r\n\r\n"
    ).encode()
    answer = await _raw_http(number, request)
    assert answer.startswith(b"HTTP/1.1 401 "), answer


async def test_another_keys_allocation_answers_exactly_as_an_unknown_one(
    running: Running, fleet: Any
) -> None:
    # before: GET answered 404 NotFound "… of this key" and DELETE 403 Forbidden: an oracle
    async with running.http.post(f"{running.url}/accounts", json={"name": "elsewhere"}) as r:
        assert r.status == 201
    async with running.http.post(
        f"{running.url}/keys", json={"name": "mallory", "scope": "submit", "account": "elsewhere"}
    ) as response:
        other = (await response.json())["data"]["api_key"]
    async with running.ws() as ws:
        held = await ask(ws, allocation(adhoc=False))
    hold_id = held["allocation_id"]
    unknown_id = "0" * len(hold_id)
    headers = {"Authorization": f"Bearer {other}"}
    for method in ("GET", "DELETE"):
        answers = []
        for allocation_id in (hold_id, unknown_id):
            url = f"{running.url}/allocations/{allocation_id}"
            async with running.http.request(method, url, headers=headers) as response:
                body = await response.json()
                answers.append((response.status, body["error"]["code"], body["message"]))
        held_answer, unknown_answer = answers
        assert held_answer == (
            unknown_answer[0],
            unknown_answer[1],
            unknown_answer[2].replace(unknown_id, hold_id),
        ), answers
        assert held_answer[:2] == (404, "UnknownAllocation")
    async with running.http.get(f"{running.url}/allocations/{hold_id}") as response:
        assert response.status == 200  # still held: the other key released nothing
