"""Turns across servers sharing one PostgreSQL database: one server at a time does a step, and
one server leads.

Both are PostgreSQL session-level advisory locks taken on a connection of the server's own; if
the server dies, or its connection does, PostgreSQL releases the lock with the session.
:class:`ServerTurn` is held across awaits that are not database work (an event batch's commit
*and* its publication to the other servers, so that every server publishes in ``seq`` order).
:class:`Leadership` is held for as long as the server lives: its holder does what one server
must do for all (the end of leases, the jobs: :mod:`apportion.jobs.duty`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from apportion.errors import Unavailable
from apportion.store import schema
from apportion.store.db import CONNECT_TIMEOUT_SECONDS, Database
from apportion.store.notices import CHANNEL, payload_of

log = logging.getLogger(__name__)


class ServerTurn:
    """Take turns on ``key`` with the other servers (:meth:`held`); :meth:`close` at stop."""

    def __init__(self, db: Database, key: int) -> None:
        self._dsn = db.asyncpg_dsn()
        self._key = key
        self._conn: Any = None  # asyncpg.Connection, made at the first turn
        self._local = asyncio.Lock()  # one turn at a time inside this server too

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Wait for the turn, hold it while the block runs, give it back.
        :class:`~apportion.errors.Unavailable` when the database cannot be reached."""
        import asyncpg  # the PostgreSQL driver: installed wherever a turn is taken

        async with self._local:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_SECONDS)
                await self._conn.execute("SELECT pg_advisory_lock($1)", self._key)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await self._drop()
                raise Unavailable(
                    f"the database did not answer ({type(exc).__name__}: {str(exc)[:200]}): "
                    "retry in a few seconds",
                    details={"retryable": True},
                ) from exc
            try:
                yield
            finally:
                try:
                    await self._conn.execute("SELECT pg_advisory_unlock($1)", self._key)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self._drop()  # a lost session has released the lock

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Close the connection (releasing a turn it would still hold)."""
        async with self._local:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                await conn.close(timeout=2)


LEADER_LOCK = 0x61707075
"""The advisory lock whose holder leads the servers sharing a database ("appu")."""

LEADER_RETRY_SECONDS = 1.0


class Leadership:
    """Which of the servers sharing one PostgreSQL database leads: the one holding a session
    advisory lock on a connection of its own. The others try for it every ``retry_seconds``;
    when the leader dies, or its connection does, PostgreSQL releases the lock and the next try
    of another server takes it. A leader that loses its connection stops leading as soon as it
    notices (within ``retry_seconds``): until then two servers may both believe they lead, so
    what only the leader does must be safe to do twice (the end of a lease is), or fenced
    (:func:`fence`: a job record is written only under the writer's own term).

    Taking the lead rewrites the ``leadership`` row on the same connection: the term's
    ``epoch`` (one more than the last leader's), and ``url``, where the others reach the leader
    (:func:`leader_of`). :meth:`start`, then :attr:`leading` and :attr:`epoch`; :meth:`changed`
    to wait for the next change; :meth:`close` at stop."""

    def __init__(self, db: Database, *, retry_seconds: float | None = None) -> None:
        self._dsn = db.asyncpg_dsn()
        self._url = ""
        self._retry = LEADER_RETRY_SECONDS if retry_seconds is None else retry_seconds
        self._task: asyncio.Task[None] | None = None
        self._change = asyncio.Event()
        self.leading = False
        self.epoch: int | None = None  # the term's, while leading
        # when this server took the lead: whether the previous leader stepped down at its stop
        # (or none led before), so that nothing it began can still be under way
        self.handed_over = False

    async def start(self, url: str) -> None:
        """Try for the lead once (so the first server leads from its start), then keep
        trying in the background. ``url``: where the others reach this server."""
        self._url = url
        tried: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(tried), name="leadership")
        await asyncio.wait([tried, self._task], return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        """Stop leading or trying (the connection's end releases the lock)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set(None)

    async def changed(self) -> None:
        """Return at the next change of :attr:`leading`."""
        await self._change.wait()

    def _set(self, epoch: int | None) -> None:
        if (epoch is not None) == self.leading and epoch == self.epoch:
            return
        self.leading, self.epoch = epoch is not None, epoch
        self._change.set()
        self._change = asyncio.Event()

    async def _run(self, tried: asyncio.Future[None]) -> None:
        import asyncpg  # the PostgreSQL driver: installed wherever a leadership is made

        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_SECONDS)
                while True:
                    if self.leading:
                        await conn.execute("SELECT 1", timeout=self._retry)
                    elif await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK, timeout=self._retry
                    ):
                        async with conn.transaction():
                            epoch, previous = await conn.fetchrow(
                                _TAKE_THE_LEAD, self._url, time.time()
                            )
                            await _tell(conn, "take", epoch)
                        self.handed_over = not previous
                        log.info(
                            "this server now leads the servers of its database (term %d)", epoch
                        )
                        self._set(int(epoch))
                    _settle(tried)
                    await asyncio.sleep(self._retry)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self.leading:
                    log.warning("this server no longer leads (its connection failed: %s)", exc)
                self._set(None)
            except asyncio.CancelledError:  # the server stops, its work done: step down
                if self.leading and conn is not None:
                    with contextlib.suppress(Exception):
                        async with conn.transaction():
                            await conn.execute(_STEP_DOWN, self.epoch, timeout=2)
                            await _tell(conn, "step-down", self.epoch)
                raise
            finally:
                if conn is not None:
                    conn.terminate()
            _settle(tried)
            await asyncio.sleep(self._retry)


_TAKE_THE_LEAD = """
WITH previous AS (SELECT url FROM leadership WHERE id = 1)
INSERT INTO leadership (id, epoch, url, since) VALUES (1, 1, $1, $2)
ON CONFLICT (id) DO UPDATE SET epoch = leadership.epoch + 1, url = $1, since = $2
RETURNING epoch, (SELECT url FROM previous)
"""
"""The new term, and the previous leader's URL: empty when it stepped down (or none led)."""

_STEP_DOWN = "UPDATE leadership SET url = '' WHERE id = 1 AND epoch = $1"
"""A leader that stops says so: its successor need not wait for its work under way."""

LEADER_TOPIC = "leader"
"""Notices of the ``leadership`` row rewritten (``take``, ``step-down``; the term): the servers
that forward to the leader read it again (:mod:`apportion.server.forwarding`)."""


async def _tell(conn: Any, verb: str, epoch: int | None) -> None:
    """Notify, in ``conn``'s transaction, that the leadership row changed (asyncpg)."""
    await conn.execute(
        "SELECT pg_notify($1, $2)", CHANNEL, payload_of(LEADER_TOPIC, verb, str(epoch))
    )


@dataclass(frozen=True)
class Leader:
    """The leader of the servers sharing a database, as its row says."""

    epoch: int
    url: str  # empty once it stepped down
    since: float


async def leader_of(db: Database) -> Leader | None:
    """The ``leadership`` row (None before any server led; the server it names may since have
    died: its successor rewrites the row when it takes the lead)."""
    async with db.read() as conn:
        row = (
            await conn.execute(select(schema.leadership).where(schema.leadership.c.id == 1))
        ).first()
    return None if row is None else Leader(row.epoch, row.url, row.since)


class NotLeading(Unavailable):
    """This server's term as leader ended (another server leads since): what it was writing is
    refused, and the next leader carries on."""


Fence = Callable[[Connection], None]
"""Run first in a transaction; raises to refuse it (:func:`fence`: an old leader's writes)."""


def fence(epoch: int) -> Fence:
    """A check, run first in a transaction, that lets the transaction write only while
    ``epoch`` is still the current term (:class:`NotLeading` otherwise). It reads the row
    ``FOR SHARE``: a new leader's rewrite of the row waits for the transactions that passed
    the check to commit, and every later one sees its new epoch."""

    def check(conn: Connection) -> None:
        row = schema.leadership
        current = conn.execute(
            select(row.c.epoch).where(row.c.id == 1).with_for_update(read=True)
        ).scalar_one_or_none()
        if current != epoch:
            raise NotLeading(
                f"this server no longer leads (its term {epoch} ended; term {current} began):"
                " retry, and another server answers",
                details={"retryable": True},
            )

    return check


def _settle(tried: asyncio.Future[None]) -> None:
    if not tried.done():
        tried.set_result(None)
