"""Opening the database: URL resolution, SQLite pragmas, migrations.

``Database.open(url)`` returns a ready store: WAL journal, ``synchronous=FULL``
(a hold or job that was acknowledged survives a power cut), foreign keys on,
schema migrated. Writes go through :meth:`Database.write`, which serialises
writers inside this process so SQLite never answers "database is locked" to
ourselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from apportion.store.migrations import migrate


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


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


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """The process's handle on the store. Create with :meth:`open`; close with :meth:`close`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect, set pragmas, and migrate the schema to the latest version."""
        engine = create_async_engine(normalise_url(url))
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        db = cls(engine)
        async with db.engine.begin() as conn:
            await conn.run_sync(migrate)
        return db

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for writing; committed when the block ends without error."""
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        await self.engine.dispose()


def row_dict(row: Any) -> dict[str, Any]:
    """A result row as a plain dict."""
    return dict(row._mapping)
