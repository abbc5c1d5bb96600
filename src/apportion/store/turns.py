"""Turns across servers sharing one PostgreSQL database: one server at a time does a step.

:class:`ServerTurn` is a PostgreSQL session-level advisory lock taken on a connection of the
server's own, held across awaits that are not database work (an event batch's commit *and* its
publication to the other servers, so that every server publishes in ``seq`` order). If the
server dies, or its connection does, PostgreSQL releases the lock with the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from apportion.errors import Unavailable
from apportion.store.db import CONNECT_TIMEOUT_SECONDS, Database


class ServerTurn:
    """Take turns on ``key`` with the other servers (:meth:`held`); :meth:`close` at stop."""

    def __init__(self, db: Database, key: int) -> None:
        self._dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
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
