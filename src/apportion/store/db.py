"""Opening the database: URL resolution, SQLite pragmas, migrations.

``Database.open(url)`` returns a ready store: WAL journal, ``synchronous=FULL``
(a hold or job that was acknowledged survives a power cut), foreign keys on,
schema migrated. Writes go through :meth:`Database.write` or
:meth:`Database.write_batch`, which serialise writers inside this process so SQLite
never answers "database is locked" to ourselves.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from apportion.store.migrations import migrate

T = TypeVar("T")


def normalise_url(url: str) -> str:
    """Accept ``sqlite:///path`` (the documented form) as well as driver URLs."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith("sqlite+aiosqlite://"):
        return url
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/apportion.db "
        "(PostgreSQL support is planned)"
    )


SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def sqlite_path(async_url: str) -> str | None:
    """The database file of a ``sqlite+aiosqlite:///`` URL; None for an in-memory database."""
    path = async_url[len("sqlite+aiosqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def make_private(path: str) -> None:
    """Create the database file 0600 if it is missing, and set 0600 on it and on its -wal,
    -shm and -journal files: the database is the server's alone. SQLite creates the -wal and
    -shm files with the database file's mode, so they stay 0600 afterwards."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in SQLITE_SUFFIXES:
        try:
            os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            continue


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """The process's handle on the store. Create with :meth:`open`; close with :meth:`close`.

    Two ways to write, serialised by one lock: :meth:`write` (an async transaction; every
    statement is a hand-off to aiosqlite's thread and back) for occasional changes, and
    :meth:`write_batch` (a synchronous function run on the writer thread inside one
    transaction: one hand-off for the whole batch) for the
    :class:`~apportion.store.committer.GroupCommitter` of the hold journal, the job writer and
    the event outbox, whose latency bounds throughput. Only the repositories under
    :mod:`apportion.store.repos` use either.
    """

    def __init__(self, engine: AsyncEngine, sync_engine: Engine) -> None:
        self.engine = engine
        self._sync_engine = sync_engine
        self._write_lock = asyncio.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apportion-db-writer")
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> Database:
        """Make the database file private (0600, see :func:`make_private`), connect, set
        pragmas, and migrate the schema to the latest version."""
        async_url = normalise_url(url)
        path = sqlite_path(async_url)
        if path is not None:
            await asyncio.to_thread(make_private, path)
        engine = create_async_engine(async_url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        sync_engine = create_engine("sqlite://" + async_url[len("sqlite+aiosqlite://") :])
        event.listen(sync_engine, "connect", _sqlite_pragmas)
        db = cls(engine, sync_engine)
        async with db.engine.begin() as conn:
            await conn.run_sync(migrate)
        return db

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for writing; committed when the block ends without error."""
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    async def write_batch(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread inside one transaction, committed when
        ``fn`` returns (rolled back if it raises, and the error re-raised here); return its
        result. ``fn`` must only use the connection: it runs off the event loop. If the caller
        is cancelled, the batch still completes on the writer thread."""
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            future = loop.run_in_executor(self._writer, self._run_batch, fn)
            return await asyncio.shield(future)

    def _run_batch(self, fn: Callable[[Connection], T]) -> T:
        with self._sync_engine.begin() as conn:
            return fn(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        """Close both engines and the writer thread (idempotent)."""
        await self.engine.dispose()
        if not self._closed:
            self._closed = True
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._sync_engine.dispose)
            self._writer.shutdown(wait=True)
