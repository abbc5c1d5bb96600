"""The store's two write paths against a real SQLite file: async transactions and batches on the
writer thread, serialised by one lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select

from apportion.store.db import Database
from apportion.store.schema import events


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{tmp_path}/store.db")
    try:
        yield database
    finally:
        await database.close()


def insert(kind: str) -> dict[str, object]:
    return {"type": kind, "payload": "{}", "ts": 0.0}


async def count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(events))).scalar() or 0)


async def test_a_batch_commits_and_returns_its_result(db: Database) -> None:
    def write(conn: Connection) -> int:
        conn.execute(events.insert(), [insert("a"), insert("b")])
        return int(conn.execute(select(func.count()).select_from(events)).scalar() or 0)

    assert await db.write_batch(write) == 2
    assert await count(db) == 2  # visible to the async readers once it returned


async def test_a_failing_batch_is_rolled_back_and_raises(db: Database) -> None:
    def write(conn: Connection) -> None:
        conn.execute(events.insert(), [insert("a")])
        raise ValueError("half way")

    with pytest.raises(ValueError, match="half way"):
        await db.write_batch(write)
    assert await count(db) == 0


async def test_batches_and_async_writes_interleave_without_locking_errors(db: Database) -> None:
    async def batch(i: int) -> None:
        await db.write_batch(lambda conn: conn.execute(events.insert(), [insert(f"b{i}")]))

    async def plain(i: int) -> None:
        async with db.write() as conn:
            await conn.execute(events.insert().values(**insert(f"p{i}")))

    await asyncio.gather(*(f(i) for i in range(20) for f in (batch, plain)))
    assert await count(db) == 40


async def test_close_twice_is_harmless(tmp_path: Path) -> None:
    database = await Database.open(f"sqlite:///{tmp_path}/store.db")
    await database.write_batch(lambda conn: conn.execute(events.insert(), [insert("a")]))
    await database.close()
    await database.close()
    reopened = await Database.open(f"sqlite:///{tmp_path}/store.db")
    try:
        assert await count(reopened) == 1  # committed before the close
    finally:
        await reopened.close()
