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
from collections.abc import Callable
from typing import Any

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
    log ("HTTP", "WebSocket"). Used on the event loop only."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._log = BoundedLog(log)

    def admit(self) -> bool:
        """Count a new connection in and return True, or return False (and count and log it,
        at a bounded rate) when ``limit`` are open; the caller then closes it."""
        if self.open >= self.limit:
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
        return True

    def release(self) -> None:
        """Count an admitted connection out (called once, when it is lost)."""
        self.open -= 1

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._admitted = self._gate.admit()
        if not self._admitted:
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._gate.release()
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
