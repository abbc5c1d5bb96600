"""Files (``files``): what was uploaded or a job wrote, by id; the content is in the data dir
(:class:`~apportion.files.FileBook`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import delete, select

from apportion.store import schema
from apportion.store.db import Database
from apportion.store.turns import Fence


@dataclass(frozen=True)
class FileRow:
    """A ``files`` row."""

    file_id: str
    account: str
    user_name: str | None
    key_id: str | None
    name: str
    size: int
    sha512: str
    type: str
    created_at: float
    job_id: str | None


class FileRepo:
    """The file book's storage; each write is one transaction, which ``fence`` (when given)
    checks first (a leader's term: store/turns.py)."""

    def __init__(self, db: Database, *, fence: Fence | None = None) -> None:
        self._db = db
        self._fence = fence

    async def all(self) -> list[FileRow]:
        """Every file, oldest first."""
        query = select(schema.files).order_by(schema.files.c.created_at, schema.files.c.file_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [FileRow(**row._asdict()) for row in rows]

    async def insert(self, row: FileRow) -> None:
        """Store a new file's record."""
        async with self._db.write() as conn:
            if self._fence is not None:
                await conn.run_sync(self._fence)
            await conn.execute(schema.files.insert().values(**asdict(row)))

    async def delete(self, file_id: str) -> None:
        """Forget a file's record."""
        async with self._db.write() as conn:
            if self._fence is not None:
                await conn.run_sync(self._fence)
            await conn.execute(delete(schema.files).where(schema.files.c.file_id == file_id))
