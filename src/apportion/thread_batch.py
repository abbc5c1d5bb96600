"""Blocking calls made in one turn of the event loop, run together in one worker thread.

Many jobs are dispatched, polled and ended at once (an array's thousand tasks, a burst of short
jobs): each blocking step of each job — a few file reads, a ``mkdir``, a process-table check —
handed to a thread of its own costs a thread hop, a wake-up of the loop and a fight for the GIL
of its own, more than the step itself. A :class:`ThreadBatch` gathers the calls of one function
made during one turn of the loop and runs them one after another in one worker thread; each
caller gets its own result or its own exception, as with :func:`asyncio.to_thread`.

Order: calls run in the order they were made. A slow call delays the calls of its batch behind
it (as it would a thread pool's queue once its threads are busy). Results are handed back every
:data:`SETTLE_EVERY` calls, not once the whole batch ran: the first of a thousand dispatches
goes on to its backend while the others are still being prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

SETTLE_EVERY = 32  # calls run before their results are handed back to the loop

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


class ThreadBatch(Generic[ArgT, ResultT]):
    """``await batch(arg)`` is ``await asyncio.to_thread(fn, arg)``, with the calls of one turn
    of the event loop sharing one thread hop. Used on one event loop."""

    def __init__(self, fn: Callable[[ArgT], ResultT]) -> None:
        self._fn = fn
        self._pending: list[tuple[ArgT, asyncio.Future[ResultT]]] = []

    async def __call__(self, arg: ArgT) -> ResultT:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[ResultT] = loop.create_future()
        self._pending.append((arg, result))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop)
        return await result

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        loop.run_in_executor(None, self._run, loop, batch)

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[ArgT, asyncio.Future[ResultT]]],
    ) -> None:
        outcomes: list[tuple[asyncio.Future[ResultT], ResultT | None, BaseException | None]] = []
        for index, (arg, result) in enumerate(batch, start=1):
            try:
                outcomes.append((result, self._fn(arg), None))
            except Exception as exc:
                outcomes.append((result, None, exc))
            if index % SETTLE_EVERY == 0 or index == len(batch):
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                    loop.call_soon_threadsafe(_settle, outcomes)
                outcomes = []


def _settle(
    outcomes: list[tuple[asyncio.Future[ResultT], ResultT | None, BaseException | None]],
) -> None:
    for result, value, error in outcomes:
        if result.done():  # its caller was cancelled
            continue
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(value)  # type: ignore[arg-type]  # None only with an error
