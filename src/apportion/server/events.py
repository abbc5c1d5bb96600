"""The event outbox: every event is committed to the ``events`` table before anyone hears of it.

CONTRACTS §7: events carry ``seq`` (monotonic per database) and ``ts`` (ISO-8601 UTC), are stored
before they are emitted, and ``GET /events?since=<seq>`` returns what a client missed.

:class:`EventLog` group-commits through a :class:`~apportion.store.committer.GroupCommitter`:
concurrent :meth:`EventLog.append` calls hand their event over and the committer writes
everything handed over in one transaction (one fsync for many events), then hands each event to
the sinks in ``seq`` order before the appenders resume. The committer's flusher exists only
while there is work, so the log needs no start; :meth:`EventLog.close` drains it.

Old events are pruned (:meth:`EventLog.prune_forever`, started by the server) to the
:class:`Retention` of the settings; the newest event is always kept, so ``seq`` never goes
back. A ``since`` older than the oldest kept event answers from the oldest kept one: the gap in
``seq`` tells the client that what it missed was pruned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from apportion import jsonutil
from apportion.store.committer import GroupCommitter
from apportion.store.db import Database
from apportion.store.repos.events import EventRepo, NewEvent, write_events
from apportion.timefmt import iso_utc

log = logging.getLogger(__name__)

Event = dict[str, Any]
Sink = Callable[[Event], Awaitable[None]]

EMIT_ORDER_LOCK = 0x61707074
"""The advisory lock of the servers' turns to commit and emit events (``redis_url``: their
emits reach each other's clients, so they must come in ``seq`` order)."""

RESERVED_KEYS = frozenset({"type", "seq", "ts", "account"})
MAX_TYPE_LENGTH = 100
MAX_LIMIT = 10_000


def _event(
    seq: int, type_: str, ts_iso: str, account: str | None, payload: dict[str, Any]
) -> Event:
    """The event as sinks and readers get it; ``account`` only on an account's event."""
    head: Event = {"type": type_, "seq": seq, "ts": ts_iso}
    if account is not None:
        head["account"] = account
    return {**head, **payload}


def audience_of(event: Event) -> str | None:
    """The account whose keys (with operators and admins) may see ``event``; None for a
    fleet-wide event, which every key sees."""
    account = event.get("account")
    return account if isinstance(account, str) else None


@dataclass(frozen=True)
class Retention:
    """How much of the event log is kept: events younger than ``max_age_seconds``, at most
    ``max_events`` of them (the newest always), pruned every ``interval_seconds``."""

    max_age_seconds: float
    max_events: int
    interval_seconds: float = 600.0


class EventLog:
    """Events are stored before they are emitted (CONTRACTS §7). ``seq`` is monotonic per database.

    Built once by the app on the server's :class:`Database`; the job lifecycle, the allocation
    service, the registry and the limits route call :meth:`append`; ``GET /events`` and the
    Socket.IO ``subscribe`` handler call :meth:`since`.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        turn: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        """``turn`` (servers whose sinks reach each other's clients, through Redis): held from
        before a batch's commit until its sinks have it, so servers emit in ``seq`` order."""
        self._repo = EventRepo(db)
        self._clock = clock
        self._sinks: list[Sink] = []
        self._committer: GroupCommitter[_Appended, int] = GroupCommitter(
            db,
            write_events,
            name="event-outbox",
            after_commit=self._emit_batch,
            around=turn,
            announcer=True,
        )

    def add_sink(self, sink: Sink) -> None:
        """Register a coroutine called with every event after it is committed (e.g. the
        Socket.IO broadcaster, the telemetry counter). Sinks run in registration order; an
        exception in a sink is logged and never reaches the appender."""
        self._sinks.append(sink)

    def append(
        self, type: str, payload: dict[str, Any], *, account: str | None = None
    ) -> Awaitable[Event]:
        """Hand one event over to be stored, then emitted — now, when called (so it is
        committed with the changes handed to the database's committers before it, or after
        them, never before) — and return what to await: the event ``{"type", "seq", "ts",
        "account"?, **payload}`` once stored. ``account`` is the account whose work the event
        is about (a job's, a hold's): only that account's keys, operators and admins see it;
        None (a cluster's update, a policy upload) is the fleet's, for every key.

        Raises ``ValueError`` for an empty or over-long ``type`` or a payload that uses a
        reserved key (``type``, ``seq``, ``ts``, ``account``), ``TypeError`` for a payload JSON
        cannot hold and ``RuntimeError`` once the log is closed (when called); the awaitable
        raises the database's error when the commit fails (the event was then neither stored
        nor emitted). Events appended by one process are emitted in ``seq`` order even when
        this is called concurrently. If the caller is cancelled the event is still stored and
        emitted.
        """
        if not type or len(type) > MAX_TYPE_LENGTH:
            raise ValueError(f"an event type must be 1 to {MAX_TYPE_LENGTH} characters: {type!r}")
        clash = sorted(RESERVED_KEYS & payload.keys())
        if clash:
            raise ValueError(
                f"event payload keys {clash} are reserved (the log sets type, seq and ts)"
            )
        ts = self._clock()
        item = _Appended(type, jsonutil.dumps_str(payload), ts, account, payload, iso_utc(ts))
        committed = self._committer.submit([item])
        stored: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def tell(_: asyncio.Future[list[int]]) -> None:
            error = committed.exception()
            if stored.done():  # the caller stopped waiting
                return
            if error is not None:
                stored.set_exception(error)
            else:
                [seq] = committed.result()
                stored.set_result(_event(seq, item.type, item.ts_iso, item.account, item.fields))

        committed.add_done_callback(tell)
        return stored

    async def _emit_batch(self, batch: Sequence[_Appended], seqs: Sequence[int]) -> None:
        for item, seq in zip(batch, seqs, strict=True):
            event = _event(seq, item.type, item.ts_iso, item.account, item.fields)
            for sink in self._sinks:
                try:
                    await sink(event)
                except Exception:
                    log.exception("event sink %r failed on %s #%s", sink, item.type, seq)

    async def since(
        self,
        seq: int,
        *,
        limit: int = 1000,
        types: Collection[str] | None = None,
        only_account: str | None = None,
    ) -> list[Event]:
        """Events with ``seq`` greater than ``seq``, oldest first, at most ``limit`` of them,
        only of ``types`` when given (an empty collection matches nothing), and with
        ``only_account`` only the fleet's and that account's (what a key of that account may
        see; None for operators and admins). Raises ``ValueError`` for a negative ``seq`` or a
        ``limit`` outside 1..10000."""
        if seq < 0:
            raise ValueError(f"since must be 0 or a positive seq, not {seq}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        if types is not None and not types:
            return []
        rows = await self._repo.since(seq, limit=limit, types=types, only_account=only_account)
        return [
            _event(r.seq, r.type, iso_utc(r.ts), r.account, jsonutil.loads(r.payload)) for r in rows
        ]

    async def latest_seq(self) -> int:
        """The newest stored ``seq``; 0 when the log is empty."""
        return await self._repo.latest_seq()

    async def prune(self, *, keep: int, max_age_seconds: float | None = None) -> int:
        """Delete the oldest events beyond the newest ``keep`` and, with ``max_age_seconds``,
        those older than that (by this log's clock); returns how many went. The newest event
        is always kept, so :meth:`latest_seq` never goes backwards; ``keep`` must be at least 1.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the newest event anchors seq), not {keep}")
        older_than = None if max_age_seconds is None else self._clock() - max_age_seconds
        return await self._repo.prune(keep=keep, older_than=older_than)

    async def prune_to(self, retention: Retention) -> int:
        """Prune to ``retention`` once; returns how many events went (the server calls this at
        start, before it serves, then :meth:`prune_forever` does it periodically)."""
        removed = await self.prune(
            keep=retention.max_events, max_age_seconds=retention.max_age_seconds
        )
        if removed:
            log.info("pruned %d old event(s)", removed)
        return removed

    async def prune_forever(
        self,
        retention: Retention,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """The server's prune loop (started by :mod:`apportion.app`, cancelled at stop): every
        ``retention.interval_seconds``, :meth:`prune_to` ``retention``. A prune that fails is
        logged and tried again at the next interval; the loop ends only by cancellation."""
        while True:
            await sleep(retention.interval_seconds)
            try:
                await self.prune_to(retention)
            except Exception:
                log.exception("pruning the event log failed; trying again later")

    async def close(self) -> None:
        """Refuse new events and wait for those already appended to be stored and emitted
        (call before the database closes)."""
        await self._committer.close()


@dataclass(frozen=True)
class _Appended(NewEvent):
    """An event handed to the committer, with its payload as given and its time as the wire
    shows it (both for the emitted event)."""

    fields: dict[str, Any]
    ts_iso: str
