"""Turns across servers sharing one PostgreSQL database: one server at a time does a step, and
one server leads.

Both are PostgreSQL session-level advisory locks taken on a connection of the server's own; if
the server dies, or its connection does, PostgreSQL releases the lock with the session.
:class:`ServerTurn` is held across awaits that are not database work (an event batch's commit
*and* its publication to the other servers, so that every server publishes in ``seq`` order).
:class:`Leadership` is held for as long as the server lives: its holder does what one server
must do for all (the end of leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from apportion.errors import Unavailable
from apportion.store.db import CONNECT_TIMEOUT_SECONDS, Database

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
    what only the leader does must be safe to do twice (the end of a lease is).
    :meth:`start`, then :attr:`leading`; :meth:`close` at stop."""

    def __init__(self, db: Database, *, retry_seconds: float | None = None) -> None:
        self._dsn = db.asyncpg_dsn()
        self._retry = LEADER_RETRY_SECONDS if retry_seconds is None else retry_seconds
        self._task: asyncio.Task[None] | None = None
        self.leading = False

    async def start(self) -> None:
        """Try for the lead once (so the first server leads from its start), then keep
        trying in the background."""
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
        self.leading = False

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
                        self.leading = True
                        log.info("this server now leads the servers of its database")
                    _settle(tried)
                    await asyncio.sleep(self._retry)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self.leading:
                    log.warning("this server no longer leads (its connection failed: %s)", exc)
                self.leading = False
            finally:
                if conn is not None:
                    conn.terminate()
            _settle(tried)
            await asyncio.sleep(self._retry)


def _settle(tried: asyncio.Future[None]) -> None:
    if not tried.done():
        tried.set_result(None)
