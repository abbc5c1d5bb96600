"""The event outbox: every event is committed to the ``events`` table before anyone hears of it.

CONTRACTS §7: events carry ``seq`` (monotonic per database) and ``ts`` (ISO-8601 UTC), are stored
before they are emitted, and ``GET /events?since=<seq>`` returns what a client missed.

:class:`EventLog` group-commits: concurrent :meth:`EventLog.append` calls queue their event and
one flusher task writes everything queued in one transaction (one fsync for many events), then
hands each event to the sinks in ``seq`` order. The flusher exists only while there is work, so
the log needs no start/stop; :meth:`EventLog.close` waits for a flush in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select

from apportion import jsonutil
from apportion.store.db import Database
from apportion.store.schema import events
from apportion.timefmt import iso_utc

log = logging.getLogger(__name__)

Event = dict[str, Any]
Sink = Callable[[Event], Awaitable[None]]

RESERVED_KEYS = frozenset({"type", "seq", "ts"})
MAX_TYPE_LENGTH = 100
MAX_LIMIT = 10_000


def _event(seq: int, type_: str, ts: float, payload: dict[str, Any]) -> Event:
    return {"type": type_, "seq": seq, "ts": iso_utc(ts), **payload}


@dataclass
class _Pending:
    type: str
    payload: dict[str, Any]
    encoded: bytes
    ts: float
    done: asyncio.Future[Event]


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for item in batch:
        if not item.done.done():
            item.done.set_exception(exc)


class EventLog:
    """Events are stored before they are emitted (CONTRACTS §7). ``seq`` is monotonic per database.

    Built once by the app on the server's :class:`Database`; the scheduling loop, the allocation
    service, the registry and the limits route call :meth:`append`; ``GET /events`` and the
    Socket.IO ``subscribe`` handler call :meth:`since`.
    """

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._sinks: list[Sink] = []
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    def add_sink(self, sink: Sink) -> None:
        """Register a coroutine called with every event after it is committed (e.g. the
        Socket.IO broadcaster, the telemetry counter). Sinks run in registration order; an
        exception in a sink is logged and never reaches the appender."""
        self._sinks.append(sink)

    async def append(self, type: str, payload: dict[str, Any]) -> Event:
        """Store one event, then emit it; returns ``{"type", "seq", "ts", **payload}``.

        Raises ``ValueError`` for an empty or over-long ``type`` or a payload that uses a
        reserved key (``type``, ``seq``, ``ts``), ``TypeError`` for a payload JSON cannot hold,
        and the database's error when the commit fails (the event was then neither stored nor
        emitted). Events appended by one process are emitted in ``seq`` order even when this is
        called concurrently. If the caller is cancelled the event is still stored and emitted.
        """
        if not type or len(type) > MAX_TYPE_LENGTH:
            raise ValueError(f"an event type must be 1 to {MAX_TYPE_LENGTH} characters: {type!r}")
        clash = sorted(RESERVED_KEYS & payload.keys())
        if clash:
            raise ValueError(
                f"event payload keys {clash} are reserved (the log sets type, seq and ts)"
            )
        encoded = jsonutil.dumps(payload)
        done: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(type, payload, encoded, self._clock(), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="event-outbox")
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        """Write and emit batches until the queue is empty (one transaction per batch)."""
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                stored = await self._store(batch)
            except asyncio.CancelledError:
                # shutting down mid-commit: nobody may wait forever on a future
                batch, self._queue = batch + self._queue, []
                _fail(batch, RuntimeError("the event log was shut down before the commit"))
                raise
            except Exception as exc:
                log.exception("could not store %d event(s); they were not emitted", len(batch))
                _fail(batch, exc)
                continue
            for item, event in zip(batch, stored, strict=True):
                await self._emit(event)
                if not item.done.done():
                    item.done.set_result(event)

    async def _store(self, batch: list[_Pending]) -> list[Event]:
        # One compiled INSERT for the whole batch (executemany) with the seqs assigned here:
        # under the write lock, in the same transaction as the read of the newest seq, so they
        # are exactly the ones SQLite's AUTOINCREMENT would have given.
        rows = [
            {"type": item.type, "payload": item.encoded.decode(), "ts": item.ts} for item in batch
        ]

        def store(conn: Connection) -> int:
            newest = conn.execute(select(func.max(events.c.seq))).scalar()
            first = int(newest or 0) + 1
            for i, row in enumerate(rows):
                row["seq"] = first + i
            conn.execute(events.insert(), rows)
            return first

        first = await self._db.write_batch(store)
        return [_event(first + i, item.type, item.ts, item.payload) for i, item in enumerate(batch)]

    async def _emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                await sink(event)
            except Exception:
                log.exception("event sink %r failed on %s #%s", sink, event["type"], event["seq"])

    async def since(
        self, seq: int, *, limit: int = 1000, types: Collection[str] | None = None
    ) -> list[Event]:
        """Events with ``seq`` greater than ``seq``, oldest first, at most ``limit`` of them,
        only of ``types`` when given (an empty collection matches nothing). Raises
        ``ValueError`` for a negative ``seq`` or a ``limit`` outside 1..10000."""
        if seq < 0:
            raise ValueError(f"since must be 0 or a positive seq, not {seq}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        if types is not None and not types:
            return []
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        if types is not None:
            query = query.where(events.c.type.in_(sorted(set(types))))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_event(int(r.seq), r.type, float(r.ts), jsonutil.loads(r.payload)) for r in rows]

    async def latest_seq(self) -> int:
        """The newest stored ``seq``; 0 when the log is empty."""
        async with self._db.read() as conn:
            value = (await conn.execute(select(func.max(events.c.seq)))).scalar()
        return int(value or 0)

    async def prune(self, *, keep: int = 100_000) -> int:
        """Delete the oldest events beyond the newest ``keep``; returns how many went.
        ``keep`` must be at least 1 so that :meth:`latest_seq` never goes backwards."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the newest event anchors seq), not {keep}")
        cutoff_query = select(events.c.seq).order_by(events.c.seq.desc()).offset(keep - 1).limit(1)
        async with self._db.write() as conn:
            cutoff = (await conn.execute(cutoff_query)).scalar()
            if cutoff is None:
                return 0
            result = await conn.execute(delete(events).where(events.c.seq < cutoff))
        return int(result.rowcount)

    async def close(self) -> None:
        """Wait for events already appended to be stored and emitted (call before the
        database closes)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            with contextlib.suppress(Exception):
                await flusher
