"""Group commit for job records: many jobs' changes, one transaction, one fsync.

:meth:`JobBook.save <apportion.jobs.records.JobBook.save>` hands each change here: the job's
whole row as it is at that moment and, for a status change, its history entry. The
:class:`~apportion.store.committer.GroupCommitter` writes the changes handed over while a commit
is under way together (:func:`apportion.store.repos.jobs.write_changes`: same effect as writing
them one by one), with its rule: order kept, a handed-over change written even if its caller is
cancelled, a failed batch failing all its callers and writing nothing.

Who waits: dispatch tasks and the watch's concurrent polls save many jobs at once (dozens when
short jobs start and end together); they share fsyncs instead of queueing for one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from apportion.store.committer import GroupCommitter
from apportion.store.db import Database
from apportion.store.repos.jobs import JobChange, fenced_writes
from apportion.store.turns import Fence


class JobWriter:
    """Owned by :class:`~apportion.jobs.records.JobBook`: commits its changes and knows, per
    job, which are still pending (:meth:`settled`)."""

    def __init__(
        self,
        db: Database,
        *,
        committed: Callable[[Sequence[JobChange]], None],
        failed: Callable[[JobChange], None],
        fence: Fence | None = None,
    ) -> None:
        """``committed(changes)``: called with each committed batch, before its callers resume
        and before the events committed with it are emitted; ``failed(change)``: with each
        change whose commit failed; ``fence``: checked at the start of every batch (none: every
        batch is written)."""
        self._committed = committed
        self._failed = failed
        self._committer: GroupCommitter[JobChange, None] = GroupCommitter(
            db, fenced_writes(fence), name="job-writer", after_commit=self._tell_committed
        )
        self._pending: dict[str, set[asyncio.Future[list[None]]]] = {}  # job id → uncommitted

    def write(self, change: JobChange) -> asyncio.Future[list[None]]:
        """Hand ``change`` over now (it is committed in the order of the hand-overs to the
        database's committers) and return what to await: it resolves once committed, or raises
        the database's error if the commit failed. A cancelled caller's change is still
        written. A job's first change must be ``new`` and committed before its next one is
        handed over."""
        done = self._committer.submit([change])
        self._pending.setdefault(change.row.job_id, set()).add(done)
        done.add_done_callback(lambda _: self._settle(change, done))
        return asyncio.shield(done)  # a cancelled caller leaves ``done`` pending until committed

    async def _tell_committed(self, changes: Sequence[JobChange], _: Sequence[None]) -> None:
        self._committed(changes)

    async def settled(self, job_id: str) -> None:
        """Wait until every change of ``job_id`` handed over so far is committed (or failed):
        a reader of the store then sees what the in-memory record already shows."""
        pending = list(self._pending.get(job_id, ()))
        if pending:
            await asyncio.wait(pending)

    def _settle(self, change: JobChange, done: asyncio.Future[list[None]]) -> None:
        job_id = change.row.job_id
        pending = self._pending.get(job_id)
        if pending is not None:
            pending.discard(done)
            if not pending:
                del self._pending[job_id]
        if done.exception() is not None:  # never cancelled: only this writer holds it
            self._failed(change)

    async def close(self) -> None:
        """Refuse new changes and wait for those already handed over to be written."""
        await self._committer.close()
