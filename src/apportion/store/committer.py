"""Group commit: many callers' changes, one transaction, one fsync.

With ``synchronous=FULL`` every SQLite commit waits for the disk, and a change is acknowledged
only after its commit. A :class:`GroupCommitter` gathers the changes handed over while a commit
is under way and writes them together in the next one, each caller still waiting for *its*
change. The hold journal (:mod:`apportion.allocation.hold_journal`), the job writer
(:mod:`apportion.jobs.writer`) and the event outbox (:mod:`apportion.server.events`) each own
one, with the batch function of their repository.

The rule, the same for every user:

* **Order is kept.** :meth:`GroupCommitter.submit` queues the changes synchronously, before the
  caller's first ``await``: the queue's order is the order of the calls, batches are written in
  that order, and a batch function sees its changes in that order.
* **Handed over means written.** Once :meth:`submit` has returned, the change is committed even
  if the caller is cancelled while it waits (its ``CancelledError`` is raised in the caller as
  usual; the commit goes on). A caller that must undo its in-memory effect when cancelled
  cannot assume the change was dropped. (The future is not shielded: a shield costs a second
  future per change on the hot path, and the queue, not the future, is what gets written.)
* **Every caller learns the outcome.** The awaitable resolves with the change's results once
  the batch is committed, and ``after_commit`` (if given) has run; or raises the batch's error.
* **A batch is all or nothing.** The batch function runs in one transaction
  (:meth:`Database.write_batch`); if it raises, nothing of the batch is written and every caller
  in it gets the error. The next batch is written as usual.
* **Closing drains.** :meth:`close` refuses new changes (``RuntimeError``) and returns once
  every change already handed over is committed or failed. If the flusher task itself is
  cancelled (the event loop is going away), every change it had not committed fails with
  ``RuntimeError``: nobody waits forever.

A batch function runs on the database's writer thread, off the event loop: the changes it is
given must be immutable snapshots (frozen dataclasses, encoded JSON), never live objects the
event loop may change meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection

from apportion.store.db import Database

log = logging.getLogger(__name__)

ChangeT = TypeVar("ChangeT")
ResultT = TypeVar("ResultT")

MAX_BATCH = 512
"""Changes per transaction at most: a burst is written as several batches, in order (one
hand-over is never split: a larger one is a batch of its own)."""

BatchWriter = Callable[[Connection, Sequence[ChangeT]], Sequence[ResultT]]
"""Writes a batch on the writer thread and returns one result per change, in order."""


@dataclass(slots=True)
class _Handed(Generic[ChangeT, ResultT]):
    changes: Sequence[ChangeT]
    done: asyncio.Future[list[ResultT]]


class GroupCommitter(Generic[ChangeT, ResultT]):
    """Batches changes into transactions on ``db``'s writer thread (the rule is in the module
    docstring). No start: a flusher task exists only while there is work. Built by the owner of
    one table family's writes with that family's batch function; ``after_commit`` runs on the
    event loop after each committed batch, before its callers resume (the event outbox emits
    there, so events reach sinks in ``seq`` order). ``around``, when given, is entered before
    each batch's commit and left after its ``after_commit`` (the event outbox takes its turn
    among servers there); a batch whose ``around`` cannot be entered fails its callers."""

    def __init__(
        self,
        db: Database,
        write: BatchWriter[ChangeT, ResultT],
        *,
        name: str,
        after_commit: Callable[[Sequence[ChangeT], Sequence[ResultT]], Awaitable[None]]
        | None = None,
        around: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._db = db
        self._write = write
        self._name = name
        self._after_commit = after_commit
        self._around = around
        self._max_batch = max_batch
        self._queue: list[_Handed[ChangeT, ResultT]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, changes: Sequence[ChangeT]) -> asyncio.Future[list[ResultT]]:
        """Hand ``changes`` over (now, synchronously) and return the future of their results,
        one per change. Cancelling the future (as cancelling a caller that awaits it does)
        does not withdraw the changes: they stay queued and are written. Raises
        ``RuntimeError`` after :meth:`close`."""
        if self._closed:
            raise RuntimeError("the server is stopping; retry against the restarted server")
        done: asyncio.Future[list[ResultT]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Handed(changes, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=self._name)
        return done

    async def close(self) -> None:
        """Refuse new changes and wait until those handed over are committed or failed."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await asyncio.wait([flusher])

    async def _flush(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                stopped = RuntimeError(
                    "the server stopped before this change was known to be committed"
                )
                for handed in batch + self._queue:
                    _fail(handed, stopped)
                self._queue = []
                raise

    def _take(self) -> list[_Handed[ChangeT, ResultT]]:
        """The oldest hand-overs holding at most ``max_batch`` changes (at least one)."""
        size = 0
        for index, handed in enumerate(self._queue):
            size += len(handed.changes)
            if size > self._max_batch and index > 0:
                batch, self._queue = self._queue[:index], self._queue[index:]
                return batch
        batch, self._queue = self._queue, []
        return batch

    async def _commit(self, batch: list[_Handed[ChangeT, ResultT]]) -> None:
        async with AsyncExitStack() as turn:
            if self._around is not None:
                try:
                    await turn.enter_async_context(self._around())
                except Exception as exc:
                    log.error("%s: %d change(s) not written: %s", self._name, len(batch), exc)
                    for handed in batch:
                        _fail(handed, exc)
                    return
            await self._commit_and_tell(batch)

    async def _commit_and_tell(self, batch: list[_Handed[ChangeT, ResultT]]) -> None:
        changes = [change for handed in batch for change in handed.changes]

        def write(conn: Connection) -> list[ResultT]:
            results = list(self._write(conn, changes))
            if len(results) != len(changes):  # a broken batch function: roll back
                raise RuntimeError(f"{len(results)} results for {len(changes)} changes")
            return results

        try:
            results = await self._db.write_batch(write)
        except Exception as exc:
            log.error("%s: writing %d change(s) failed: %s", self._name, len(changes), exc)
            for handed in batch:
                _fail(handed, exc)
            return
        if self._after_commit is not None:
            try:
                await self._after_commit(changes, results)
            except Exception:  # committed all the same: the callers learn that
                log.exception("%s: after_commit failed", self._name)
        start = 0
        for handed in batch:
            end = start + len(handed.changes)
            if not handed.done.done():
                handed.done.set_result(results[start:end])
            start = end


def _fail(handed: _Handed[ChangeT, ResultT], exc: BaseException) -> None:
    if not handed.done.done():
        handed.done.set_exception(exc)
