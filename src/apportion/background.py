"""The server's background work under one ``asyncio.TaskGroup``.

Two kinds of task run in it:

* **loops** (:meth:`Background.loop`): the admission loop, the dispatch watch, lease expiry,
  the collectors… They run until the server stops, which cancels them.
* **work** (:meth:`Background.spawn`): a piece of work that must not be cut short, such as the
  dispatch of one job to its backend, or an admission cycle under way. A stop lets it finish,
  and work that work under way spawns (the dispatches of the jobs that cycle admitted).

:meth:`Background.stop` cancels the loops, waits for every task of the group to end (bounded:
after ``grace`` seconds what is left is cancelled, and waited for once more, as long), and
guarantees that no task of the group is left once it returns — unless a task ignores its
cancellation, which is logged by name. Each task is its own error boundary: one that fails is
logged, and the others go on (a bare TaskGroup would cancel them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None] | None]
"""How a component starts work under the server's task group: ``spawn(coroutine, name)``
gives the task, or ``None`` when the group refused it (see :meth:`Background.spawn`)."""


class Background:
    """Owns the server's task group, from :meth:`start` to :meth:`stop` (each called once, by
    the server)."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._loops: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Enter the task group (in a task of its own, which holds it until :meth:`stop`)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._hold(ready), name="background")
        await ready

    async def _hold(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set_result(None)
                await self._closing.wait()
            # leaving the block waited for every task of the group
        finally:
            self._group = None

    def loop(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` until the server stops (then it is cancelled). Refused once the server
        is stopping."""
        task = self._create(coro, name, refuse=self._closing.is_set())
        if task is not None:
            self._loops.add(task)
            task.add_done_callback(self._loops.discard)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Run ``coro`` to its end; a stop waits for it (up to its grace period), also when it
        was spawned by other work while the stop waits. Refused, with a warning in the log,
        once the group has ended or its grace ran out: the caller's intent must already be
        durable (a dispatch left undone is redone by the next start's reconcile). Returns the
        task (await it with ``asyncio.wait``, which does not cancel it), or ``None``."""
        return self._create(coro, name, refuse=False)

    def _create(
        self, coro: Coroutine[Any, Any, None], name: str, *, refuse: bool
    ) -> asyncio.Task[None] | None:
        group, guarded = self._group, _guarded(coro, name)
        task = None
        if group is not None and not refuse:
            # the group refuses once it has finished, or while it cancels what is left
            with contextlib.suppress(RuntimeError):
                task = group.create_task(guarded, name=name)
        if task is None:
            guarded.close()
            coro.close()
            log.warning("background task %s not started: the server is not running", name)
            return None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # a task cancelled before its first step never awaited ``coro``: close it quietly
        task.add_done_callback(lambda _: coro.close())
        return task

    def tasks(self) -> list[asyncio.Task[None]]:
        """The group's tasks that have not ended yet."""
        return [t for t in self._tasks if not t.done()]

    async def stop(self, grace: float) -> None:
        """Cancel the loops, let the work finish, and return once every task has ended."""
        if self._runner is None:
            return
        for task in list(self._loops):
            task.cancel()
        self._closing.set()
        if not await _within(self._runner, grace):
            for task in self.tasks():
                log.error(
                    "background task %s did not end within %g s; cancelled", task.get_name(), grace
                )
            self._runner.cancel()  # the group cancels what is left
            if not await _within(self._runner, grace):
                for task in self.tasks():
                    log.error("background task %s ignores its cancellation", task.get_name())
        self._runner = None


async def _within(task: asyncio.Task[None], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``task`` to end, without cancelling it; whether it ended."""
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
    # arrives as the awaited task ends, and a stop would then not stop
    try:
        async with asyncio.timeout(seconds):
            await asyncio.shield(task)
    except TimeoutError:
        return False
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # the stop itself was cancelled
    return True


async def _guarded(coro: Coroutine[Any, Any, None], name: str) -> None:
    """One error boundary per task: a failure is logged, never silent, never contagious."""
    try:
        await coro
    except Exception:
        log.exception("background task %s failed", name)
