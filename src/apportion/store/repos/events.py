"""The event log (``events``): appended by the event outbox's committer, read by ``since``,
pruned by age and count."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select

from apportion.store.db import Database
from apportion.store.schema import events


@dataclass(frozen=True)
class NewEvent:
    """An event handed to the committer; ``payload`` is its JSON text."""

    type: str
    payload: str
    ts: float


@dataclass(frozen=True)
class EventRow:
    """A stored event; ``payload`` is its JSON text."""

    seq: int
    type: str
    payload: str
    ts: float


def write_events(conn: Connection, batch: Sequence[NewEvent]) -> list[int]:
    """Append a batch in order and return each event's ``seq``. One compiled INSERT for the
    whole batch (executemany) with the seqs assigned here: under the write lock, in the same
    transaction as the read of the newest seq, so they are exactly the ones SQLite's
    AUTOINCREMENT would have given."""
    newest = conn.execute(select(func.max(events.c.seq))).scalar()
    first = int(newest or 0) + 1
    seqs = [first + i for i in range(len(batch))]
    rows = [
        {"seq": seq, "type": e.type, "payload": e.payload, "ts": e.ts}
        for seq, e in zip(seqs, batch, strict=True)
    ]
    if rows:
        conn.execute(events.insert(), rows)
    return seqs


class EventRepo:
    """Reads and pruning of the event log (:class:`~apportion.server.events.EventLog`'s)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def since(
        self, seq: int, *, limit: int, types: Collection[str] | None = None
    ) -> list[EventRow]:
        """Events with ``seq`` greater than ``seq``, oldest first, at most ``limit``, only of
        ``types`` when given."""
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        if types is not None:
            query = query.where(events.c.type.in_(sorted(set(types))))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [EventRow(int(r.seq), r.type, r.payload, float(r.ts)) for r in rows]

    async def latest_seq(self) -> int:
        """The newest stored ``seq``; 0 when the log is empty."""
        async with self._db.read() as conn:
            value = (await conn.execute(select(func.max(events.c.seq)))).scalar()
        return int(value or 0)

    async def prune(self, *, keep: int, older_than: float | None = None) -> int:
        """Delete every event but the newest ``keep`` (≥ 1) and, when ``older_than`` is given,
        every event stored before that time but the newest one; returns how many went. The
        newest event is always kept: it anchors ``seq``."""
        cutoff_query = select(events.c.seq).order_by(events.c.seq.desc()).offset(keep - 1).limit(1)
        async with self._db.write() as conn:
            newest = (await conn.execute(select(func.max(events.c.seq)))).scalar()
            if newest is None:
                return 0
            by_count = (await conn.execute(cutoff_query)).scalar()
            condition = events.c.seq < (by_count if by_count is not None else 0)
            if older_than is not None:
                condition = condition | ((events.c.ts < older_than) & (events.c.seq < newest))
            result = await conn.execute(delete(events).where(condition))
        return int(result.rowcount)
