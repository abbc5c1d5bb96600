"""The event log (``events``): appended by the event outbox's committer, read by ``since``,
pruned by age and count."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, or_, select

from apportion.store.db import Database
from apportion.store.schema import events


@dataclass(frozen=True)
class NewEvent:
    """An event handed to the committer; ``payload`` is its JSON text, ``account`` the account
    whose work it is about (None: the fleet's)."""

    type: str
    payload: str
    ts: float
    account: str | None


@dataclass(frozen=True)
class EventRow:
    """A stored event; ``payload`` is its JSON text."""

    seq: int
    type: str
    payload: str
    ts: float
    account: str | None


EVENTS_LOCK = 0x61707073
"""The PostgreSQL advisory lock an event batch holds until it commits ("apps")."""


def write_events(conn: Connection, batch: Sequence[NewEvent]) -> list[int]:
    """Append a batch in order and return each event's ``seq``. One compiled INSERT for the
    whole batch (executemany) with the seqs assigned here: under the write lock, in the same
    transaction as the read of the newest seq, so they are exactly the ones SQLite's
    AUTOINCREMENT would have given. On PostgreSQL, where several servers append, the batch
    first takes an advisory lock held until it commits: one sequence for every server, and
    events committed in ``seq`` order, so a reader of ``since`` never sees a later event
    before an earlier one."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(EVENTS_LOCK)))
    newest = conn.execute(select(func.max(events.c.seq))).scalar()
    first = int(newest or 0) + 1
    seqs = [first + i for i in range(len(batch))]
    rows = [
        {"seq": seq, "type": e.type, "payload": e.payload, "ts": e.ts, "account": e.account}
        for seq, e in zip(seqs, batch, strict=True)
    ]
    if rows:
        conn.execute(events.insert(), rows)
    return seqs


PRUNE_CHUNK = 10_000
"""Events deleted per transaction when pruning."""


class EventRepo:
    """Reads and pruning of the event log (:class:`~apportion.server.events.EventLog`'s)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def since(
        self,
        seq: int,
        *,
        limit: int,
        types: Collection[str] | None = None,
        only_account: str | None = None,
    ) -> list[EventRow]:
        """Events with ``seq`` greater than ``seq``, oldest first, at most ``limit``, only of
        ``types`` when given; with ``only_account``, only the fleet's events (no account) and
        that account's."""
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        if types is not None:
            query = query.where(events.c.type.in_(sorted(set(types))))
        if only_account is not None:
            query = query.where(or_(events.c.account.is_(None), events.c.account == only_account))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [EventRow(int(r.seq), r.type, r.payload, float(r.ts), r.account) for r in rows]

    async def latest_seq(self) -> int:
        """The newest stored ``seq``; 0 when the log is empty."""
        async with self._db.read() as conn:
            value = (await conn.execute(select(func.max(events.c.seq)))).scalar()
        return int(value or 0)

    async def prune(
        self, *, keep: int, older_than: float | None = None, chunk: int = PRUNE_CHUNK
    ) -> int:
        """Delete every event whose ``seq`` is ``keep`` (≥ 1) or more below the newest (seqs
        are consecutive but for pruned prefixes, so the newest ``keep`` stay) and, when
        ``older_than`` is given, every event before the first one stored at or after that time
        (in ``seq`` order; ``ts`` grows with it but for clock steps) — never the newest, which
        anchors ``seq``. Returns how many went. Deleted ``chunk`` at a time, each in its own
        transaction, so commits of new events, holds and jobs wait for one chunk at most;
        finding the cut reads only the rows it deletes."""
        async with self._db.read() as conn:
            newest = (await conn.execute(select(func.max(events.c.seq)))).scalar()
            if newest is None:
                return 0
            cut = int(newest) - keep + 1
            if older_than is not None:
                first_young = (
                    await conn.execute(
                        select(events.c.seq)
                        .where(events.c.ts >= older_than)
                        .order_by(events.c.seq)
                        .limit(1)
                    )
                ).scalar()
                cut = max(cut, int(newest) if first_young is None else int(first_young))
        removed = 0
        while True:
            async with self._db.write() as conn:
                oldest = (await conn.execute(select(func.min(events.c.seq)))).scalar()
                if oldest is None or oldest >= cut:
                    return removed
                upto = min(cut, int(oldest) + chunk)
                result = await conn.execute(delete(events).where(events.c.seq < upto))
            removed += int(result.rowcount)
