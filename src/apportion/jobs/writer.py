"""Group commit for job records: many jobs' changes, one transaction, one fsync.

:meth:`JobBook.save <apportion.jobs.records.JobBook.save>` hands each change here: the
job's whole row as it is at that moment and, for a status change, its history entry. Changes
submitted while a commit is under way are written together in the next one, each caller still
waiting until *its* change is durable. Within a batch the newest row of a job wins (each row is
the job's full state, taken in order) and history entries keep their order, so a batch has the
same effect as its changes written one by one.

Who waits: dispatch tasks and the watch's concurrent polls save many jobs at once (dozens when
short jobs start and end together); they share fsyncs instead of queueing for one each.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, update

from apportion.store import schema
from apportion.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class _Change:
    job_id: str
    row: dict[str, Any]  # every column but job_id
    history: dict[str, Any] | None  # a job_statuses row, for a status change
    done: asyncio.Future[None]
    new: bool = False  # the job's first row (INSERT), else an UPDATE


class JobWriter:
    """Writes job rows and history entries in batches (no start/stop: a flusher task exists
    only while there is work; :meth:`close` waits for it)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[_Change] = []
        self._flusher: asyncio.Task[None] | None = None
        self._pending: dict[str, set[asyncio.Future[None]]] = {}  # job id → uncommitted changes

    async def write(
        self,
        job_id: str,
        row: dict[str, Any],
        history: dict[str, Any] | None = None,
        *,
        new: bool = False,
    ) -> None:
        """Commit ``row`` (the ``jobs`` columns but ``job_id``; ``new``: the job's first row)
        and, when given, the history entry; returns once committed, raises the database's error
        if the commit failed. A cancelled caller's change is still written. A job's first
        change must be ``new`` and awaited before its next one is handed over."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Change(job_id, row, history, done, new))
        pending = self._pending.setdefault(job_id, set())
        pending.add(done)
        done.add_done_callback(lambda _: self._settle(job_id, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="job-writer")
        await asyncio.shield(done)

    async def settled(self, job_id: str) -> None:
        """Wait until every change of ``job_id`` handed over so far is committed (or failed):
        a reader of the store then sees what the in-memory record already shows."""
        pending = list(self._pending.get(job_id, ()))
        if pending:
            await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)

    def _settle(self, job_id: str, done: asyncio.Future[None]) -> None:
        pending = self._pending.get(job_id)
        if pending is not None:
            pending.discard(done)
            if not pending:
                del self._pending[job_id]

    async def close(self) -> None:
        """Wait for the changes already handed over to be written."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for change in batch + self._queue:
                    if not change.done.done():
                        change.done.set_exception(RuntimeError("the server stopped mid-commit"))
                self._queue = []
                raise
            except Exception as exc:
                log.error("writing %d job change(s) failed: %s", len(batch), exc)
                for change in batch:
                    if not change.done.done():
                        change.done.set_exception(exc)
                continue
            for change in batch:
                if not change.done.done():
                    change.done.set_result(None)

    async def _commit(self, batch: list[_Change]) -> None:
        # a job's first row is awaited before its next change, so inserts come first
        inserts = [{"job_id": c.job_id, **c.row} for c in batch if c.new]
        newest = {c.job_id: c.row for c in batch if not c.new}  # later rows win
        history = [change.history for change in batch if change.history is not None]

        def write(conn: Connection) -> None:
            if inserts:
                conn.execute(schema.jobs.insert(), inserts)
            if newest:
                conn.execute(*_updates(newest))
            if history:
                conn.execute(schema.job_statuses.insert(), history)

        await self._db.write_batch(write)


def _updates(newest: dict[str, dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """One UPDATE statement and its executemany parameters for the jobs' newest rows."""
    columns = sorted(next(iter(newest.values())))  # every row has Job.row()'s keys
    # bind names may not be column names in an UPDATE's SET: prefix them
    rows = [
        {"b_job_id": job_id, **{f"v_{name}": row[name] for name in columns}}
        for job_id, row in newest.items()
    ]
    statement = (
        update(schema.jobs)
        .where(schema.jobs.c.job_id == bindparam("b_job_id"))
        .values({name: bindparam(f"v_{name}") for name in columns})
    )
    return statement, rows
