"""Group commit: many callers' changes, one transaction, one fsync.

With ``synchronous=FULL`` every SQLite commit waits for the disk, and a change is acknowledged
only after its commit. A :class:`GroupCommitter` gathers the changes handed over while a commit
is under way and writes them together in the next one, each caller still waiting for *its*
change. The hold journal (:mod:`apportion.allocation.hold_journal`), the job writer
(:mod:`apportion.jobs.writer`) and the event outbox (:mod:`apportion.server.events`) each own
one, with the batch function of their repository.

The committers of one :class:`Database` share one line of changes: what they are handed goes
into one queue, in the order of the calls, and a commit writes what the queue holds — the
changes of every committer in it — in one transaction. So a state change and the event that
announces it, handed over one after the other, are written together (one fsync, and no crash
between them can keep the one without the other), and never the event first.

The rule, the same for every user:

* **Order is kept.** :meth:`GroupCommitter.submit` queues the changes synchronously, before the
  caller's first ``await``: the queue's order is the order of the calls — across the
  committers of one database too — batches are written in that order, and a batch function
  sees its changes in that order. A change is never written in a commit before one handed
  over ahead of it.
* **Handed over means written.** Once :meth:`submit` has returned, the change is committed even
  if the caller is cancelled while it waits (its ``CancelledError`` is raised in the caller as
  usual; the commit goes on). A caller that must undo its in-memory effect when cancelled
  cannot assume the change was dropped. (The future is not shielded: a shield costs a second
  future per change on the hot path, and the queue, not the future, is what gets written.)
* **Every caller learns the outcome.** The awaitable resolves with the change's results once
  the batch is committed, and every ``after_commit`` of its committers has run; or raises the
  batch's error.
* **A batch is all or nothing.** The batch functions of one commit run in one transaction
  (:meth:`Database.write_batch`); if one raises, nothing of the batch is written and every
  caller in it — of every committer — gets the error. The next batch is written as usual.
* **Closing drains.** :meth:`GroupCommitter.close` refuses new changes (``RuntimeError``) and
  returns once every change already handed over is committed or failed. If the flusher task
  itself is cancelled (the event loop is going away), every change it had not committed fails
  with ``RuntimeError``: nobody waits forever.

A batch function runs on the database's writer thread, off the event loop: the changes it is
given must be immutable snapshots (frozen dataclasses, encoded JSON), never live objects the
event loop may change meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from apportion.store.db import Database

log = logging.getLogger(__name__)

ChangeT = TypeVar("ChangeT")
ResultT = TypeVar("ResultT")

MAX_BATCH = 512
"""Changes of one committer per transaction at most: a burst is written as several batches, in
order (one hand-over is never split: a larger one is a batch of its own)."""

BatchWriter = Callable[[Connection, Sequence[ChangeT]], Sequence[ResultT]]
"""Writes a batch on the writer thread and returns one result per change, in order."""


class GroupCommitter(Generic[ChangeT, ResultT]):
    """Batches changes into transactions on ``db``'s writer thread (the rule is in the module
    docstring). No start: a flusher task exists only while there is work. Built by the owner of
    one table family's writes with that family's batch function; ``after_commit`` runs on the
    event loop after each committed batch, before its callers resume (the event outbox emits
    there, so events reach sinks in ``seq`` order); an ``announcer``'s runs after the other
    committers' of the batch (what the events announce is in memory before anyone hears of
    it). ``around``, when given, is entered before each batch's commit and left after its
    ``after_commit`` (the event outbox takes its turn among servers there); a batch whose
    ``around`` cannot be entered fails this committer's callers in it (the other committers'
    changes are written)."""

    def __init__(
        self,
        db: Database,
        write: BatchWriter[ChangeT, ResultT],
        *,
        name: str,
        after_commit: Callable[[Sequence[ChangeT], Sequence[ResultT]], Awaitable[None]]
        | None = None,
        around: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        announcer: bool = False,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.name = name
        self.announcer = announcer
        self.write = write
        self.after_commit = after_commit
        self.around = around
        self.max_batch = max_batch
        self._line = _line_of(db)
        self._unwritten = 0  # hand-overs neither committed nor failed
        self._written: asyncio.Event | None = None  # set when none is left (while closing)
        self._closed = False

    def submit(self, changes: Sequence[ChangeT]) -> asyncio.Future[list[ResultT]]:
        """Hand ``changes`` over (now, synchronously) and return the future of their results,
        one per change. Cancelling the future (as cancelling a caller that awaits it does)
        does not withdraw the changes: they stay queued and are written. Raises
        ``RuntimeError`` after :meth:`close`."""
        if self._closed:
            raise RuntimeError("the server is stopping; retry against the restarted server")
        self._unwritten += 1
        return self._line.hand_over(self, changes)

    async def close(self) -> None:
        """Refuse new changes and wait until those handed over are committed or failed."""
        self._closed = True
        if self._unwritten:
            if self._written is None:
                self._written = asyncio.Event()
            await self._written.wait()

    def _settled(self) -> None:
        """One of this committer's hand-overs was committed or failed (by the line)."""
        self._unwritten -= 1
        if not self._unwritten and self._written is not None:
            self._written.set()


@dataclass(slots=True)
class _Handed:
    committer: GroupCommitter[Any, Any]
    changes: Sequence[Any]
    done: asyncio.Future[list[Any]]
    settled: bool = False

    def settle(self, results: list[Any] | BaseException) -> None:
        """Tell the caller (unless it stopped waiting) and its committer, once."""
        if self.settled:
            return
        self.settled = True
        if not self.done.done():
            if isinstance(results, BaseException):
                self.done.set_exception(results)
            else:
                self.done.set_result(results)
        self.committer._settled()


_ByCommitter = dict[GroupCommitter[Any, Any], list[Any]]
"""Changes, or their results, of each committer of a batch, in order."""


class _CommitLine:
    """The queue of one database's committers and its flusher (module docstring). A batch's
    ``after_commit`` hooks and its callers are told on a task of their own, in the order of
    the batches, while the next batch is written: the writer thread does not wait for the
    event loop to announce what it wrote."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[_Handed] = []
        self.flusher: asyncio.Task[None] | None = None
        self._telling: asyncio.Task[None] | None = None  # the last committed batch's

    def hand_over(
        self, committer: GroupCommitter[ChangeT, ResultT], changes: Sequence[ChangeT]
    ) -> asyncio.Future[list[ResultT]]:
        done: asyncio.Future[list[ResultT]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Handed(committer, changes, done))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush(), name="commit-line")
        return done

    async def _flush(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for handed in batch + self._queue:
                    handed.settle(_stopped())
                self._queue = []
                raise

    def _take(self) -> list[_Handed]:
        """The oldest hand-overs up to the first that would give its committer more than its
        ``max_batch`` changes (at least one)."""
        sizes: dict[GroupCommitter[Any, Any], int] = {}
        for index, handed in enumerate(self._queue):
            committer = handed.committer
            size = sizes.get(committer, 0) + len(handed.changes)
            if size > committer.max_batch and index > 0:
                batch, self._queue = self._queue[:index], self._queue[index:]
                return batch
            sizes[committer] = size
        batch, self._queue = self._queue, []
        return batch

    async def _commit(self, batch: list[_Handed]) -> None:
        """Write ``batch`` in one transaction (each committer's turn taken first), then have
        it told (:meth:`_tell`) on a task of its own."""
        committers = list(dict.fromkeys(h.committer for h in batch))
        turns = AsyncExitStack()  # left by the batch's telling, or here when not committed
        try:
            writing = []
            for committer in committers:
                if committer.around is not None:
                    try:
                        await turns.enter_async_context(committer.around())
                    except Exception as exc:
                        log.error("%s: change(s) not written: %s", committer.name, exc)
                        for handed in batch:
                            if handed.committer is committer:
                                handed.settle(exc)
                        continue
                writing.append(committer)
            batch = [h for h in batch if h.committer in writing]
            if not batch:  # no committer could take its turn
                await turns.aclose()
                return
            changes, results = await self._write(batch, writing)
        except BaseException as exc:
            await turns.aclose()
            if isinstance(exc, Exception):  # the batch failed: its callers learn why
                names = ", ".join(c.name for c in committers)
                log.error("%s: writing %d change(s) failed: %s", names, len(batch), exc)
                for handed in batch:
                    handed.settle(exc)
                return
            raise
        told = self._tell(self._telling, batch, writing, changes, results, turns)
        self._telling = asyncio.create_task(told, name="commit-line-tell")

    async def _write(
        self, batch: list[_Handed], committers: list[GroupCommitter[Any, Any]]
    ) -> tuple[_ByCommitter, _ByCommitter]:
        """Each committer's changes of ``batch`` and their results, written in one
        transaction by the committers' batch functions."""
        changes: _ByCommitter = {c: [] for c in committers}
        for handed in batch:
            changes[handed.committer].extend(handed.changes)

        def write(conn: Connection) -> _ByCommitter:
            written = {}
            for committer in committers:
                mine = changes[committer]
                results = list(committer.write(conn, mine))
                if len(results) != len(mine):  # a broken batch function: roll back
                    raise RuntimeError(
                        f"{committer.name}: {len(results)} results for {len(mine)} changes"
                    )
                written[committer] = results
            return written

        return changes, await self._db.write_batch(write)

    @staticmethod
    async def _tell(
        previous: asyncio.Task[None] | None,
        batch: list[_Handed],
        committers: list[GroupCommitter[Any, Any]],
        changes: _ByCommitter,
        results: _ByCommitter,
        turns: AsyncExitStack,
    ) -> None:
        """After the batch before (``previous``) was told: run the ``after_commit`` hooks of a
        committed batch (an announcer's last), then give each caller its results, then leave
        the committers' turns."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            for committer in sorted(committers, key=lambda c: c.announcer):
                if committer.after_commit is not None:
                    try:
                        await committer.after_commit(changes[committer], results[committer])
                    except Exception:  # committed all the same: the callers learn that
                        log.exception("%s: after_commit failed", committer.name)
            unread = {committer: iter(mine) for committer, mine in results.items()}
            for handed in batch:
                handed.settle(list(islice(unread[handed.committer], len(handed.changes))))
        except asyncio.CancelledError:
            for handed in batch:
                handed.settle(_stopped())
            raise
        finally:
            await turns.aclose()


def _stopped() -> RuntimeError:
    return RuntimeError("the server stopped before this change was known to be committed")


_LINES: weakref.WeakKeyDictionary[Database, _CommitLine] = weakref.WeakKeyDictionary()


def _line_of(db: Database) -> _CommitLine:
    """The one line of ``db``'s committers."""
    line = _LINES.get(db)
    if line is None:
        line = _LINES[db] = _CommitLine(db)
    return line
