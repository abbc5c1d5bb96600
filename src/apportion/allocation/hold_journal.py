"""Group commit for holds: many holds, releases and renewals; one transaction, one fsync.

With ``synchronous=FULL`` every SQLite commit waits for the disk, and a hold is acknowledged
only after its commit. :class:`HoldJournal` gathers the changes submitted while a commit is
under way and writes them together, each caller still waiting for *its* change to be durable.

A batch is written by its net effect, in a few multi-row statements: releases first (one
``DELETE … IN``), then new holds (one ``executemany`` per table), then renewals. A hold
made and released within one batch is never written. Releasing first is safe because a GPU
can only be held again after the engine released it in memory, so its old row is deleted in
this batch or an earlier one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, delete, update

from apportion import jsonutil
from apportion.allocation.hold import Hold
from apportion.engine.decisions import placements_json
from apportion.store import schema
from apportion.store.db import Database

log = logging.getLogger(__name__)

MAX_BATCH = 512


@dataclass
class _Change:
    kind: Literal["insert", "delete", "renew"]
    allocation_id: str
    hold: Hold | None = None
    expires_at: float = 0.0
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Net:
    inserts: dict[str, Hold] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    renews: dict[str, float] = field(default_factory=dict)
    expiry_override: dict[str, float] = field(default_factory=dict)

    def add(self, change: _Change) -> None:
        aid = change.allocation_id
        if change.kind == "insert":
            assert change.hold is not None
            self.inserts[aid] = change.hold
        elif change.kind == "delete":
            self.renews.pop(aid, None)
            if self.inserts.pop(aid, None) is None:
                self.deletes.add(aid)
        elif aid in self.inserts:
            self.expiry_override[aid] = change.expires_at
        else:
            self.renews[aid] = change.expires_at


class HoldJournal:
    """Durable record of holds; :meth:`start` before use, :meth:`close` to flush and stop."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[_Change] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hold-journal")

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    # Each method queues its change *before* its first await: the order of the queue is the
    # order of the changes in memory, which the net-effect rule above relies on.

    async def insert(self, hold: Hold) -> None:
        """Record a new hold; returns once it is committed."""
        await self._queue_changes([_Change("insert", hold.allocation_id, hold=hold)])

    async def delete(self, allocation_ids: list[str]) -> None:
        """Record that holds ended; returns once committed."""
        await self._queue_changes([_Change("delete", aid) for aid in allocation_ids])

    async def renew(self, allocation_id: str, expires_at: float) -> None:
        """Record a hold's new lease end; returns once committed."""
        await self._queue_changes([_Change("renew", allocation_id, expires_at=expires_at)])

    def _queue_changes(self, changes: list[_Change]) -> asyncio.Future[Any]:
        if self._closed:
            raise RuntimeError("the server is stopping; retry against the restarted server")
        self._queue.extend(changes)
        self._wakeup.set()
        if len(changes) == 1:  # the common case: no gathering future needed
            return changes[0].done
        return asyncio.gather(*(change.done for change in changes))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
            if self._closed:
                return

    async def _commit(self, batch: list[_Change]) -> None:
        net = _Net()
        for change in batch:
            net.add(change)
        try:
            await self._db.write_batch(lambda conn: _write(conn, net))
        except Exception as exc:
            log.error("writing %d hold change(s) failed: %s", len(batch), exc)
            for change in batch:
                if not change.done.done():
                    change.done.set_exception(exc)
            return
        for change in batch:
            if not change.done.done():
                change.done.set_result(None)


def _write(conn: Connection, net: _Net) -> None:
    if net.deletes:
        ids = sorted(net.deletes)
        conn.execute(delete(schema.hold_gpus).where(schema.hold_gpus.c.allocation_id.in_(ids)))
        conn.execute(delete(schema.holds).where(schema.holds.c.allocation_id.in_(ids)))
    if net.inserts:
        # executemany with one compiled statement per table (SQLAlchemy caches it; a
        # multi-row VALUES of varying length would compile anew for every batch size)
        holds = list(net.inserts.values())
        conn.execute(
            schema.holds.insert(),
            [
                {
                    "allocation_id": h.allocation_id,
                    "owner": h.owner,
                    "request_id": h.request_id,
                    "policy_uri": h.policy_uri,
                    "placements": jsonutil.dumps_str(placements_json(h.placements)),
                    "created_at": h.created_at,
                    "expires_at": net.expiry_override.get(h.allocation_id, h.expires_at),
                    "kind": h.kind,
                }
                for h in holds
            ],
        )
        gpu_rows = [
            {"allocation_id": h.allocation_id, "cluster_id": c, "node_id": n, "gpu_id": g}
            for h in holds
            for c, n, g in h.gpu_keys
        ]
        if gpu_rows:  # a hold of no GPUs (a job of CPU workers) has none
            conn.execute(schema.hold_gpus.insert(), gpu_rows)
    if net.renews:
        conn.execute(
            update(schema.holds)
            .where(schema.holds.c.allocation_id == bindparam("aid"))
            .values(expires_at=bindparam("exp")),
            [{"aid": aid, "exp": exp} for aid, exp in net.renews.items()],
        )
