"""The allocation WebSocket of the client: one connection, many requests in flight.

Every message gets a ``request_id`` (ours if the caller gave none); a reader task matches
answers to waiting futures by it. The connection opens on first use and is reopened, with
exponential backoff, by the next request after it drops. Requests in flight when it drops fail
with :class:`ConnectionLostError` (never silently resent: a hold is not idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from apportion import jsonutil
from apportion.clients.errors import (
    ApportionClientError,
    ConnectionLostError,
    ServerUnreachableError,
    error_from_envelope,
)


class AllocationSocket:
    """A multiplexed allocation connection. ``request`` sends one message and returns the
    success envelope; it raises the typed error of a failure envelope."""

    def __init__(
        self,
        ws_url: str,
        api_key: str | None,
        *,
        retries: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        open_timeout: float = 10.0,
    ) -> None:
        self.ws_url = ws_url
        self._api_key = api_key
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._open_timeout = open_timeout
        self._conn: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._prefix = f"c{os.getpid():x}-{id(self):x}-"
        self.connects = 0  # how many times a connection was opened (for tests and logs)

    async def _connection(self) -> ClientConnection:
        async with self._lock:
            if self._conn is not None and self._reader is not None and not self._reader.done():
                return self._conn
            delay = self._backoff
            conn: ClientConnection | None = None
            for attempt in range(self._retries + 1):
                try:
                    conn = await self._open()
                    break
                except ApportionClientError:
                    raise
                except (OSError, InvalidHandshake, TimeoutError) as exc:
                    if attempt == self._retries:
                        raise ServerUnreachableError(
                            f"cannot reach the allocation WebSocket at {self.ws_url}: "
                            f"{exc or type(exc).__name__}; is the server running? "
                            "(check --ws-url or APPORTION_WS_URL)",
                            code="Unreachable",
                            details={"url": self.ws_url},
                        ) from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff)
            assert conn is not None
            self._conn = conn
            self.connects += 1
            self._reader = asyncio.create_task(self._read(conn), name="apportion-ws-reader")
            return conn

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            return await connect(
                self.ws_url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                max_size=None,
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            text = exc.response.body.decode("utf-8", errors="replace") if exc.response.body else ""
            if 400 <= status < 500:
                raise error_from_envelope(text or f"HTTP {status}", status=status) from None
            raise

    async def _read(self, conn: ClientConnection) -> None:
        try:
            async for message in conn:
                try:
                    answer = jsonutil.loads(message)
                except Exception:  # noqa: S112 - a garbled frame cannot be matched to anyone
                    continue
                rid = answer.get("request_id") if isinstance(answer, dict) else None
                future = self._pending.pop(rid, None) if isinstance(rid, str) else None
                if future is not None and not future.done():
                    future.set_result(answer)
        except ConnectionClosed:
            pass
        finally:
            lost = ConnectionLostError(
                f"the allocation WebSocket {self.ws_url} closed with this request in flight; "
                "retry it (a hold it asked for may exist: list your allocations)",
                code="ConnectionLost",
                details={"url": self.ws_url},
            )
            for rid, future in list(self._pending.items()):
                if not future.done():
                    future.set_exception(lost)
                self._pending.pop(rid, None)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` (a request_id is added if missing) and wait for its answer."""
        body = dict(message)
        rid = body.get("request_id") or f"{self._prefix}{next(self._ids)}"
        body["request_id"] = rid
        conn = await self._connection()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if rid in self._pending:
            raise ApportionClientError(
                f"request_id {rid!r} is already in flight on this connection; use unique ids",
                code="InvalidRequest",
            )
        self._pending[rid] = future
        try:
            await conn.send(jsonutil.dumps_str(body))
        except ConnectionClosed:
            self._pending.pop(rid, None)
            raise ConnectionLostError(
                f"the allocation WebSocket {self.ws_url} closed before the request was sent; retry",
                code="ConnectionLost",
                details={"url": self.ws_url},
            ) from None
        try:
            answer = await future
        finally:
            self._pending.pop(rid, None)
        if not answer.get("success"):
            raise error_from_envelope(answer)
        return answer

    async def close(self) -> None:
        """Close the connection; waiting requests fail with :class:`ConnectionLostError`."""
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        if conn is not None:
            await conn.close()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def drop(self) -> None:
        """Abort the transport as a network failure would (tests of the reconnect path)."""
        if self._conn is not None:
            self._conn.transport.abort()
            if self._reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
