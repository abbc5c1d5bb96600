"""What servers sharing one PostgreSQL database tell each other: change notices.

A write that other servers must follow (a hold made, ended or renewed) sends a notice inside its
own transaction (:func:`send`: PostgreSQL's ``pg_notify``, delivered when the transaction
commits, in commit order, and never if it rolls back). Every server listens on one connection of
its own (:class:`NoticeFeed`) and hands each notice to the handler of its topic, one at a time,
in the order they came.

A notice only says *what* changed (a topic, a verb, ids); a handler reads the rows themselves
when it needs them. Handlers must be idempotent: a server hears its own notices too, and a
notice may describe a row that later changes went past. When the listening connection is lost,
notices sent meanwhile are lost with it: on every (re)connection the feed calls each topic's
``resync`` first, which must bring the server's view in line with the stored rows. A notice
whose rows cannot be read (the database is away) makes the feed listen again, and so resync.

On SQLite (one server per database) nothing is sent and there is no feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select

from apportion.errors import Unavailable
from apportion.store.db import CONNECT_TIMEOUT_SECONDS, Database

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "apportion_changes"

MAX_PAYLOAD = 7000
"""Bytes of one notice at most (PostgreSQL's limit is 8,000): longer lists of ids are sent as
several notices."""

RECONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class Notice:
    """``topic`` (e.g. ``hold``), ``verb`` (e.g. ``insert``) and the words after them."""

    topic: str
    verb: str
    words: tuple[str, ...]


def payload_of(topic: str, verb: str, *words: str) -> str:
    """The text of a notice (what :func:`parse` reads): for a sender that is not a SQLAlchemy
    connection (``pg_notify(CHANNEL, payload)`` on a connection of its own)."""
    return " ".join((topic, verb, *words))


def send(conn: Connection, topic: str, verb: str, words: Sequence[str]) -> None:
    """Tell the other servers, when ``conn``'s transaction commits, that ``verb`` happened to
    ``words`` (ids without spaces) of ``topic``. Nothing on SQLite."""
    if conn.dialect.name != "postgresql" or not words:
        return
    head = payload_of(topic, verb)
    payloads: list[str] = []
    current = head
    for word in words:
        if len(current) + 1 + len(word) > MAX_PAYLOAD and current != head:
            payloads.append(current)
            current = head
        current += " " + word
    payloads.append(current)
    for payload in payloads:
        conn.execute(select(func.pg_notify(CHANNEL, payload)))


def parse(payload: str) -> Notice | None:
    """The notice of a payload :func:`send` wrote; None for anything else."""
    parts = payload.split(" ")
    if len(parts) < 2:
        return None
    return Notice(parts[0], parts[1], tuple(parts[2:]))


Handler = Callable[[Notice], Awaitable[None]]
Resync = Callable[[], Awaitable[None]]


class NoticeFeed:
    """One server's listening connection (PostgreSQL only). Register handlers with :meth:`on`
    before :meth:`start`; :meth:`close` stops it."""

    def __init__(self, db: Database, *, reconnect_seconds: float | None = None) -> None:
        self._dsn = db.asyncpg_dsn()
        self._reconnect_seconds = (
            RECONNECT_SECONDS if reconnect_seconds is None else reconnect_seconds
        )
        self._handlers: dict[str, Handler] = {}
        self._resyncs: list[Resync] = []
        self._queue: asyncio.Queue[Notice | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def on(self, topic: str, handler: Handler, resync: Resync) -> None:
        """Hand every notice of ``topic`` to ``handler``; call ``resync`` on every connection
        (before any notice it may have missed is handled)."""
        self._handlers[topic] = handler
        self._resyncs.append(resync)

    async def start(self) -> None:
        """Connect and listen; returns once listening (the first resync done)."""
        self._task = asyncio.create_task(self._run(), name="notice-feed")
        waiting = asyncio.create_task(self._connected.wait())
        await asyncio.wait([self._task, waiting], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            await self._task  # it ended before listening: raise what ended it

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        import asyncpg  # the PostgreSQL driver: installed wherever a feed is made

        first = True
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_SECONDS)
            except (OSError, asyncpg.PostgresError) as exc:
                if first:
                    raise
                log.warning("notice feed: reconnecting in %.0f s: %s", self._reconnect_seconds, exc)
                await asyncio.sleep(self._reconnect_seconds)
                continue
            try:
                await self._listen(conn)
                first = False
                await self._handle_until_lost(conn)
            except Exception as exc:  # lost, or a resync the database did not answer: again
                if first:
                    raise
                log.warning("notice feed: listening again and resyncing: %s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(self._reconnect_seconds)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        queue = self._queue

        def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            notice = parse(payload)
            if notice is not None:
                queue.put_nowait(notice)

        def terminated(_conn: object) -> None:
            queue.put_nowait(None)

        conn.add_termination_listener(terminated)
        await conn.add_listener(CHANNEL, heard)
        for resync in self._resyncs:  # after LISTEN: nothing committed later is missed
            await resync()
        self._connected.set()

    async def _handle_until_lost(self, conn: asyncpg.Connection) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as a notice does, and close() then waited for ever (seen at stops)
            try:
                async with asyncio.timeout(5.0):
                    notice = await self._queue.get()
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=5.0)  # a lost connection raises here
                continue
            if notice is None:
                raise ConnectionError("the listening connection was closed")
            handler = self._handlers.get(notice.topic)
            if handler is None:
                continue
            try:
                await handler(notice)
            except Unavailable as exc:  # its rows could not be read: resync once back
                raise ConnectionError(f"a notice could not be applied: {exc.message}") from exc
            except Exception:  # one bad notice must not stop the feed
                log.exception("notice feed: handling %s %s failed", notice.topic, notice.verb)
