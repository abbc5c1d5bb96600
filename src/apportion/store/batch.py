"""Group commit: many small writes, one transaction, one fsync.

With ``synchronous=FULL`` every SQLite commit waits for the disk. Durable holds
are acknowledged only after their commit, so committing them one by one caps
the server at the disk's fsync rate. :class:`WriteBatcher` gathers the writes
submitted while a commit is under way and commits them together; each caller
still waits for *its* write to be durable.

If a batch fails, each of its writes is retried alone so one bad write fails
only its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from apportion.store.db import Database

log = logging.getLogger(__name__)

Write = Callable[[AsyncConnection], Awaitable[None]]


@dataclass
class _Pending:
    write: Write
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WriteBatcher:
    """Submit writes with :meth:`submit`; they commit in batches of up to ``max_batch``."""

    def __init__(self, db: Database, *, max_batch: int = 512) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="write-batcher")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, write: Write) -> None:
        """Queue ``write`` and wait until it is committed (raises what the write raised)."""
        if self._closed:
            raise RuntimeError("the store is closing; retry against the restarted server")
        pending = _Pending(write)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._commit(batch)
            if self._closed:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            async with self._db.write() as conn:
                for pending in batch:
                    await pending.write(conn)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].done.done():
                    batch[0].done.set_exception(exc)
                return
            log.warning(
                "a batch of %d writes failed (%s); retrying them one by one", len(batch), exc
            )
            for pending in batch:
                await self._commit([pending])
            return
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)
