"""Events as an async iterator over Socket.IO that resumes from the last ``seq``.

The server (CONTRACTS §7) emits each event under its type name with ``seq`` and ``ts``; a client
that (re)connects sends ``subscribe {"since": seq}`` and gets what it missed as
``events_replay {"events", "latest_seq", "more"}``. :class:`EventStream` connects, subscribes
from the highest ``seq`` it has seen, holds live events back until the replay is complete, and
yields every event once, in ``seq`` order. When the connection drops for any reason it
reconnects with exponential backoff and resumes; it stops only when closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import socketio

from apportion.clients.errors import (
    ApportionClientError,
    ServerUnreachableError,
    UnauthorizedError,
)
from apportion.clients.models import Event

REPLAY = "events_replay"


class EventStream:
    """``async for event in stream`` yields :class:`Event` objects; ``await stream.aclose()``
    (or leaving ``async with``) stops it. ``types`` keeps only those event types.
    ``baseline`` is awaited once before the first connection when ``since`` is None
    (the client passes a call reading the newest ``seq``, so only new events come)."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        since: int | None,
        baseline: Callable[[], Awaitable[int]],
        types: Collection[str] | None = None,
        retries: int = 8,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._since = since
        self._baseline = baseline
        self._types = set(types) if types else None
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._last = 0  # the highest seq yielded
        self._received = 0  # the highest seq queued
        self._held: list[dict[str, Any]] = []
        self._replaying = True
        self._task: asyncio.Task[None] | None = None
        self._sio: socketio.AsyncClient | None = None
        self._closed = False
        self.connects = 0  # connections made so far (tests watch reconnects)

    # ------------------------------------------------------------------ iteration
    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="apportion-events")
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._closed = True
                raise item
            if item.seq <= self._last:
                continue
            self._last = item.seq
            if self._types is None or item.type in self._types:
                return item

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last event yielded (0 before the first)."""
        return self._last

    async def aclose(self) -> None:
        """Stop: disconnect and end the background task."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._disconnect()

    async def drop(self) -> None:
        """Abort the transport as a network failure would (tests of the resume path)."""
        if self._sio is not None:
            await self._sio.eio.disconnect(abort=True)

    # ------------------------------------------------------------------ connection loop
    def _push(self, raw: Any) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("seq"), int):
            return
        if raw["seq"] > self._received:
            self._received = raw["seq"]
        self._queue.put_nowait(Event.model_validate(raw))

    def _client(self, gone: asyncio.Event) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)

        async def any_event(event: str, data: Any = None) -> None:
            if event == REPLAY or not isinstance(data, dict):
                return
            if self._replaying:
                self._held.append(data)
            else:
                self._push(data)

        async def replay(data: Any) -> None:
            if isinstance(data, dict):
                for raw in data.get("events") or []:
                    self._push(raw)

        async def disconnected(*_args: Any) -> None:
            gone.set()

        sio.on("*", any_event)
        sio.on(REPLAY, replay)
        sio.on("disconnect", disconnected)
        return sio

    async def _subscribe(self, sio: socketio.AsyncClient) -> None:
        self._replaying = True
        while True:
            ack = await sio.call("subscribe", {"since": self._received}, timeout=30)
            if not isinstance(ack, dict) or not ack.get("success"):
                message = ack.get("message") if isinstance(ack, dict) else repr(ack)
                raise ApportionClientError(f"subscribe was refused: {message}", code="Subscribe")
            if not ack.get("more"):
                break
        held, self._held = sorted(self._held, key=lambda e: e.get("seq", 0)), []
        self._replaying = False
        for raw in held:
            self._push(raw)

    async def _run(self) -> None:
        try:
            since = self._since if self._since is not None else await self._baseline()
            self._received = self._last = max(0, since)
            failures = 0
            delay = self._backoff
            while not self._closed:
                gone = asyncio.Event()
                self._replaying = True
                sio = self._client(gone)
                self._sio = sio
                try:
                    await sio.connect(
                        self._url,
                        auth={"token": self._api_key} if self._api_key else None,
                        socketio_path="socket.io",
                        wait_timeout=10,
                    )
                    self.connects += 1
                    await self._subscribe(sio)
                    failures, delay = 0, self._backoff
                    await gone.wait()
                except socketio.exceptions.ConnectionError as exc:
                    if "Unauthorized" in str(exc):
                        raise UnauthorizedError(str(exc), code="Unauthorized", status=401) from None
                    failures += 1
                    if failures > self._retries:
                        raise ServerUnreachableError(
                            f"cannot reach Socket.IO at {self._url}: {exc}; is the server running?",
                            code="Unreachable",
                            details={"url": self._url},
                        ) from None
                except (socketio.exceptions.TimeoutError, OSError):
                    failures += 1
                finally:
                    await self._disconnect()
                if not self._closed:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._queue.put_nowait(exc)

    async def _disconnect(self) -> None:
        sio, self._sio = self._sio, None
        if sio is not None and sio.connected:
            with contextlib.suppress(Exception):
                await sio.disconnect()
