"""Connection limits of the two ports: a cap on open connections, and logs at a bounded rate.

The app builds one :class:`ConnectionGate` per port (HTTP, WebSocket). The HTTP port's
listener wraps aiohttp's protocol factory with :meth:`ConnectionGate.wrap`; the allocation
WebSocket's connections call :meth:`ConnectionGate.admit` and :meth:`ConnectionGate.release`
themselves (:mod:`apportion.server.ws`). A connection past the cap is aborted as soon as it is
accepted, before a byte of it is read, so what it costs is one accept and one close; connections
already open (an authenticated client among them) keep being answered.

:class:`BoundedLog` logs a repeated warning at most once per interval and counts the rest, so a
flood of refused connections or of failed accepts (``EMFILE``) cannot flood the log;
:func:`accept_error_handler` routes the event loop's accept errors through one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

LOG_INTERVAL_SECONDS = 10.0


class BoundedLog:
    """One warning at most every ``interval`` seconds; the ones in between are counted and
    reported with the next. Used on the event loop only."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next_at = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log ``message % args`` now if the interval has passed (True), else count it."""
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return False
        suffix = (
            f" ({self._suppressed} more like this since the last report)"
            if self._suppressed
            else ""
        )
        self._logger.warning(message + suffix, *args)
        self._suppressed = 0
        self._next_at = now + self._interval
        return True


class ConnectionGate:
    """The open connections of one port, at most ``limit``. ``name`` says which port in the
    log ("HTTP", "WebSocket"). Used on the event loop only.

    A share of the cap for the clients that authenticate: connections admitted with their
    transport (the HTTP port's) count as anonymous until :meth:`authenticated` says one made a
    request with a valid key. When the cap is reached, a new connection closes the oldest
    anonymous one instead of being refused: connections that hold the cap without ever
    authenticating (a flood of slow requests) cannot keep a client with a key out. Only when
    every open connection has authenticated is a new one refused."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.evicted = 0
        self._anonymous: OrderedDict[asyncio.Transport, None] = OrderedDict()
        self._log = BoundedLog(log)
        self._evictions = BoundedLog(log)

    def admit(self, transport: asyncio.Transport | None = None) -> bool:
        """Count a new connection in and return True, or return False (and count and log it,
        at a bounded rate) when ``limit`` are open and none of them is an anonymous one to
        close for it (see the class docstring); the caller then closes it."""
        if self.open >= self.limit and transport is not None and self._anonymous:
            oldest, _ = self._anonymous.popitem(last=False)
            oldest.abort()  # its connection_lost counts it out
            self.evicted += 1
            self._evictions.warning(
                "%s port: %d connections are open (max_connections); closed the oldest one"
                " that never authenticated to let a new one in (%d so far)",
                self.name,
                self.open,
                self.evicted,
            )
        elif self.open >= self.limit:
            self.refused += 1
            self._log.warning(
                "%s port: %d connections are open (max_connections); refusing new ones "
                "(%d refused so far)",
                self.name,
                self.open,
                self.refused,
            )
            return False
        self.open += 1
        if transport is not None:
            self._anonymous[transport] = None
        return True

    def authenticated(self, transport: asyncio.Transport | None) -> None:
        """The connection of ``transport`` made a request with a valid key: it is no longer
        one to close for a newcomer."""
        if transport is not None:
            self._anonymous.pop(transport, None)

    def release(self, transport: asyncio.Transport | None = None) -> None:
        """Count an admitted connection out (called once, when it is lost)."""
        self.open -= 1
        if transport is not None:
            self._anonymous.pop(transport, None)

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` whose connections pass this gate."""
        return lambda: _GatedProtocol(factory(), self)


class _GatedProtocol(asyncio.Protocol):
    """A stream protocol in front of another: admits the connection through the gate (or aborts
    it unread), forwards every callback, and releases the gate when the connection is lost."""

    def __init__(self, inner: asyncio.BaseProtocol, gate: ConnectionGate) -> None:
        self._inner: Any = inner  # an aiohttp RequestHandler: a stream protocol
        self._gate = gate
        self._admitted = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._admitted = self._gate.admit(transport)
        if not self._admitted:
            transport.abort()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._gate.release(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


HTTP_GATE: web.AppKey[ConnectionGate] = web.AppKey("apportion_http_gate", ConnectionGate)
"""The HTTP port's gate, on its app: the auth middleware and Socket.IO's ``connect`` tell it
which connections authenticated (:func:`mark_authenticated`)."""


def mark_authenticated(request: web.Request) -> None:
    """Tell the HTTP port's gate that ``request``'s connection authenticated (no-op on an app
    without a gate, e.g. a test harness)."""
    gate = request.app.get(HTTP_GATE)
    if gate is not None:
        gate.authenticated(request.transport)


ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"
"""What asyncio's event loop reports when ``accept`` fails with EMFILE, ENFILE, ENOBUFS or
ENOMEM (it then stops accepting on that socket for a second and retries)."""


def accept_error_handler(
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    bounded: BoundedLog | None = None,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event-loop exception handler (the app installs it at start and restores
    ``previous`` at stop): accept errors are logged through ``bounded`` — one line per
    interval, with a count — every other error goes to ``previous`` (or the loop's default)."""
    limited = bounded or BoundedLog(log)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR_MESSAGE:
            limited.warning(
                "cannot accept connections: %s; raise the open-file limit (ulimit -n) or lower "
                "max_connections",
                context.get("exception"),
            )
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle
