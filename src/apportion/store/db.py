"""Opening the database: URL resolution, SQLite pragmas, migrations.

``Database.open(url)`` returns a ready store with its schema migrated. SQLite (the embedded
default): WAL journal, ``synchronous=FULL`` (a hold or job that was acknowledged survives a power
cut), foreign keys on. PostgreSQL (``postgresql://…``, through asyncpg): a commit is durable
under the server's own settings (``synchronous_commit=on``, its default). Writes go through
:meth:`Database.write` or :meth:`Database.write_batch`, which serialise writers inside this
process so SQLite never answers "database is locked" to ourselves.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from apportion.errors import Unavailable
from apportion.store.migrations import migrate

T = TypeVar("T")

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """The SQLAlchemy URL of a database URL: ``sqlite:///path`` (the documented form) and
    ``postgresql://…`` name their async drivers (aiosqlite, asyncpg); URLs naming those drivers
    are taken as they are. Raises ``ValueError`` for anything else."""
    for plain, driver in (("sqlite://", "sqlite+aiosqlite://"), ("postgresql://", POSTGRES)):
        if url.startswith(plain):
            return driver + url[len(plain) :]
        if url.startswith(driver):
            return url
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    raise ValueError(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///path/to/apportion.db or "
        "postgresql://user:password@host:port/database"
    )


POSTGRES = "postgresql+asyncpg://"

CONNECT_TIMEOUT_SECONDS = 10.0
"""How long a new connection to PostgreSQL may take before the change waiting for it is
answered :class:`~apportion.errors.Unavailable`."""

RETRIES = 5
"""Attempts of a batch PostgreSQL aborted to end a deadlock or a serialization failure."""

RETRIED_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure

MIGRATION_LOCK = 0x61707072
"""The PostgreSQL advisory lock held while migrating ("appr"): replicas starting together
migrate one after the other, each seeing what the one before applied."""


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

    Two ways to write, serialised inside this process by one lock: :meth:`write` (an async
    transaction) for occasional changes, and :meth:`write_batch` (a synchronous function run
    inside one transaction) for the :class:`~apportion.store.committer.GroupCommitter` of the
    hold journal, the job writer and the event outbox, whose latency bounds throughput. On
    SQLite a batch runs on a writer thread of its own (one hand-off for the whole batch, where
    every statement of an async transaction is a hand-off to aiosqlite's thread and back); on
    PostgreSQL it runs on the event loop through SQLAlchemy's ``run_sync``, its round trips
    awaited by asyncpg. Only the repositories under :mod:`apportion.store.repos` use either.
    """

    def __init__(self, engine: AsyncEngine, sync_engine: Engine | None) -> None:
        self.engine = engine
        self._sync_engine = sync_engine
        self._write_lock = asyncio.Lock()
        self._writer = (
            None
            if sync_engine is None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="apportion-db-writer")
        )
        self._writer_conn: Connection | None = None  # the writer thread's, kept open
        self._closed = False

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def asyncpg_dsn(self) -> str:
        """The PostgreSQL URL for a connection of one's own outside the pool (asyncpg's
        ``connect``: a listening connection, a session lock), password included."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect to the database of ``url`` (see :func:`normalise_url`) and migrate its
        schema to the latest version. SQLite: the file is made private (0600, see
        :func:`make_private`) and its pragmas set. PostgreSQL: migrations run under an
        advisory lock, so replicas starting at once apply each migration once."""
        async_url = normalise_url(url)
        if async_url.startswith(POSTGRES):
            return await cls._open_postgres(async_url)
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

    @classmethod
    async def _open_postgres(cls, async_url: str) -> Database:
        engine = create_async_engine(
            async_url, pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS}
        )
        try:
            async with engine.begin() as conn:
                await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                await conn.run_sync(migrate)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, None)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for writing; committed when the block ends without error.
        :class:`~apportion.errors.Unavailable` when a PostgreSQL database cannot be reached."""
        with self._reachable():
            async with self._write_lock, self.engine.begin() as conn:
                yield conn

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Raise a lost or refused connection to PostgreSQL as
        :class:`~apportion.errors.Unavailable` (the pool makes a new connection on the next
        use, so the server recovers by itself once the database is back)."""
        try:
            yield
        except (OSError, DBAPIError) as exc:
            if self.dialect != "postgresql" or (
                isinstance(exc, DBAPIError) and not exc.connection_invalidated
            ):
                raise
            # the driver's own error: a DBAPIError's text would carry the statement and its values
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            raise Unavailable(
                f"the database did not answer ({type(cause).__name__}: {str(cause)[:200]}): "
                "retry in a few seconds (a change under way may or may not have been made)",
                details={"retryable": True},
            ) from exc

    async def write_batch(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` inside one transaction, committed when ``fn`` returns
        (rolled back if it raises, and the error re-raised here); return its result. ``fn``
        must only use the connection: on SQLite it runs off the event loop. If the caller is
        cancelled, the batch still completes. :class:`~apportion.errors.Unavailable` as for
        :meth:`write`."""
        if self._writer is None:
            return await asyncio.shield(asyncio.ensure_future(self._run_async_batch(fn)))
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            future = loop.run_in_executor(self._writer, self._run_batch, fn)
            return await asyncio.shield(future)

    def _run_batch(self, fn: Callable[[Connection], T]) -> T:
        """On the writer thread: ``fn`` in one transaction of the thread's own connection
        (opened once: a checkout from the pool, and its reset on return, for every batch cost
        as much as a small batch's statements)."""
        assert self._sync_engine is not None
        if self._writer_conn is None:
            self._writer_conn = self._sync_engine.connect()
        with self._writer_conn.begin():
            return fn(self._writer_conn)

    def _close_writer(self) -> None:
        """On the writer thread: close its connection, then the engine's pool."""
        assert self._sync_engine is not None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
        self._sync_engine.dispose()

    async def _run_async_batch(self, fn: Callable[[Connection], T]) -> T:
        """One transaction of ``fn`` on PostgreSQL, run again from the start (up to
        ``RETRIES`` times) when PostgreSQL chose it as the victim of a deadlock with another
        server's transaction (two servers inserting rows of the same unique keys in crossed
        orders): ``fn`` only writes what its changes say, so running it again is safe."""
        with self._reachable():
            async with self._write_lock:
                for attempt in range(1, RETRIES + 1):
                    try:
                        async with self.engine.begin() as conn:
                            return await conn.run_sync(fn)
                    except DBAPIError as exc:
                        sqlstate = getattr(exc.orig, "sqlstate", None)
                        if sqlstate not in RETRIED_SQLSTATES or attempt == RETRIES:
                            raise
                        log.info("a batch was a deadlock's victim (%s); again", sqlstate)
                raise AssertionError("unreachable: the last attempt returned or raised")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading (:class:`~apportion.errors.Unavailable` as for
        :meth:`write`)."""
        with self._reachable():
            async with self.engine.connect() as conn:
                yield conn

    async def close(self) -> None:
        """Close the engines and the writer thread (idempotent)."""
        await self.engine.dispose()
        if not self._closed:
            self._closed = True
            if self._writer is not None and self._sync_engine is not None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._writer, self._close_writer)
                self._writer.shutdown(wait=True)
