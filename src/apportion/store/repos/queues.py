"""Queues (``queues``): one JSON document per queue, by id and unique name."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from apportion.store import schema
from apportion.store.counters import take_number
from apportion.store.db import Database


@dataclass(frozen=True)
class QueueRow:
    """A ``queues`` row; ``document`` is the queue's configuration as JSON text."""

    id: str
    name: str
    document: str
    number: int  # seed 000's integer id: given once, never again


class QueueRepo:
    """The queue book's storage; each write is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[QueueRow]:
        async with self._db.read() as conn:
            rows = (await conn.execute(select(schema.queues))).all()
        return [QueueRow(r.id, r.name, r.document, r.seq) for r in rows]

    async def insert(self, queue_id: str, name: str, document: str, now: float) -> QueueRow | None:
        """Store a new queue, with the next queue number; its row, or None when a queue of
        that name is stored already (another server sharing the database made it)."""
        try:
            async with self._db.write() as conn:
                number = await take_number(conn, "queues")
                await conn.execute(
                    schema.queues.insert().values(
                        id=queue_id,
                        name=name,
                        document=document,
                        created_at=now,
                        updated_at=now,
                        seq=number,
                    )
                )
        except IntegrityError:
            if await self._named(name) is None:
                raise  # not the name: a bug of ours
            return None
        return QueueRow(queue_id, name, document, number)

    async def _named(self, name: str) -> QueueRow | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(schema.queues).where(schema.queues.c.name == name))
            ).first()
        return None if row is None else QueueRow(row.id, row.name, row.document, row.seq)

    async def replace_document(self, queue_id: str, document: str, now: float) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(schema.queues)
                .where(schema.queues.c.id == queue_id)
                .values(document=document, updated_at=now)
            )

    async def delete(self, queue_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(schema.queues).where(schema.queues.c.id == queue_id))
