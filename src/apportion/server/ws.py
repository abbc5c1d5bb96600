"""The allocation WebSocket (seed 004, CONTRACTS §2) on the ``websockets`` asyncio API.

* The handshake authenticates (``Authorization: Bearer|Token <key>``); a bad or
  missing key is refused with HTTP 401 before the upgrade.
* One JSON text message per request; many requests per connection, answered as
  they finish (``request_id`` matches them), at most ``max_in_flight`` at once
  per connection (further messages wait: back-pressure, not errors).
* A message over ``max_message_bytes`` closes the connection with 1009 (the
  library enforces it before the message is buffered); every other bad message
  gets an error answer and the connection stays open.
* A token bucket per connection answers ``RateLimited`` beyond the rate.
* At most ``gate.limit`` connections are open (:class:`~apportion.server.limits.ConnectionGate`):
  one past it is aborted when accepted, unread. The handshake, key included, must be complete
  within ``header_timeout`` seconds of the accept (``open_timeout``), so a connection without a
  key, idle or trickling its request head, is closed then.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from apportion import jsonutil
from apportion.allocation.messages import request_id_of
from apportion.allocation.service import AllocationService
from apportion.errors import ApportionError, RateLimited
from apportion.server.auth import Principal, authenticate, one_authorization
from apportion.server.dispatch import answer
from apportion.server.keys import KeyStore
from apportion.server.limits import ConnectionGate

log = logging.getLogger(__name__)
CONNECTION_LOG = logging.getLogger(f"{__name__}.connections")
"""The websockets library's per-connection lines (open, closed, a refused handshake): at INFO
one line per connection, which an anonymous flood would turn into a log flood; kept to warnings
and errors (set this logger to DEBUG to see them)."""
CONNECTION_LOG.setLevel(logging.WARNING)


class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _gated_connection(gate: ConnectionGate) -> type[ServerConnection]:
    """The connection class of one server: each passes ``gate`` when accepted (or is aborted
    before it is read) and leaves it when lost."""

    class GatedConnection(ServerConnection):
        admitted = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.admitted = gate.admit()
            if not self.admitted:
                assert isinstance(transport, asyncio.Transport)
                transport.abort()
                return
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.admitted:
                gate.release()
                super().connection_lost(exc)

    return GatedConnection


class AllocationWebSocket:
    """Serves :class:`AllocationService` over a WebSocket. ``start`` binds; ``close`` stops."""

    def __init__(
        self,
        service: AllocationService,
        keys: KeyStore,
        *,
        auth_enabled: bool,
        max_message_bytes: int,
        max_in_flight: int,
        rate_per_second: float,
        anonymous: Principal,
        gate: ConnectionGate,
        header_timeout: float,
    ) -> None:
        self._service = service
        self._keys = keys
        self._auth_enabled = auth_enabled
        self._max_message_bytes = max_message_bytes
        self._max_in_flight = max_in_flight
        self._rate = rate_per_second
        self._anonymous = anonymous
        self.gate = gate
        self._header_timeout = header_timeout
        self._principals: weakref.WeakKeyDictionary[ServerConnection, Principal] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._authenticate,
            max_size=self._max_message_bytes,
            max_queue=self._max_in_flight,
            compression=None,
            server_header="Apportion",
            open_timeout=self._header_timeout,
            create_connection=_gated_connection(self.gate),
            logger=CONNECTION_LOG,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _authenticate(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if not self._auth_enabled:
            self._principals[connection] = self._anonymous
            return None
        try:
            header = one_authorization(request.headers.get_all("Authorization"))
            principal = await authenticate(self._keys, header)
        except ApportionError as exc:
            response = connection.respond(HTTPStatus.UNAUTHORIZED, exc.message + "\n")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        self._principals[connection] = principal
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        principal = self._principals.get(connection, self._anonymous)
        bucket = TokenBucket(self._rate, burst=max(self._rate, 10.0))
        slots = asyncio.Semaphore(self._max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for message in connection:
                if not bucket.take():
                    await self._send(connection, self._rate_limited(message))
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._serve_one(connection, message, principal))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    def _rate_limited(self, message: str | bytes) -> dict[str, Any]:
        try:
            request_id = request_id_of(jsonutil.loads(message))
        except ApportionError:
            request_id = None
        return RateLimited(
            f"more than {self._rate:g} messages per second on this connection; slow down and retry",
            details={"limit_per_second": self._rate},
        ).envelope(request_id)

    async def _serve_one(
        self, connection: ServerConnection, message: str | bytes, principal: Principal
    ) -> None:
        try:
            raw = jsonutil.loads(message)
        except ApportionError as exc:
            await self._send(connection, exc.envelope())
            return
        await self._send(connection, await answer(self._service, raw, principal))

    @staticmethod
    async def _send(connection: ServerConnection, body: dict[str, Any]) -> None:
        try:
            await connection.send(jsonutil.dumps_str(body))
        except ConnectionClosed:
            log.debug("client went away before its answer was sent")
