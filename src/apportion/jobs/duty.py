"""Which server runs the jobs: the one alone on its database, or the leader of those sharing it.

Job records are kept in memory by the server that runs them (:class:`JobService`: admission,
dispatch, the watch of the backends), so exactly one server may run them. A server alone on its
SQLite database runs them from its start to its stop. Of the servers sharing a PostgreSQL
database, the leader (:class:`~apportion.store.turns.Leadership`) runs them for its term:

* **taking over** — when it gains the lead from a leader that did not step down (it died, or
  lost its connection) it waits :data:`TAKEOVER_GRACE_SECONDS` (a dispatch that leader had
  begun reaches its backend meanwhile); then it builds a new
  :class:`JobService` whose job writer is fenced by the term's epoch, reads every job from the
  database and reconciles them with the backends exactly as a restarted server does (adopt
  what reached its backend, dispatch again what did not), then runs the admission loop and the
  dispatch watch;
* **losing the lead** — it stops both loops and drops its jobs from memory. A write it still
  makes is refused by the fence (the new leader's epoch is in the row): what it did not record,
  the next leader finds again from the backends.

The other servers answer the job routes by forwarding them to the leader
(:mod:`apportion.server.forwarding`). Owned by the server (``app.py``): :meth:`load` before the
ports open, :meth:`start` once the background group runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from apportion.background import Background
from apportion.jobs.service import JobService
from apportion.store.turns import Fence, Leadership, fence

log = logging.getLogger(__name__)

TAKEOVER_GRACE_SECONDS = 2.0
"""How long a new leader waits before it reconciles the jobs: longer than a dispatch takes to
reach its backend once it began, so that the previous leader's last dispatches are found there
(and adopted), not dispatched a second time."""

FIRST_TERM_WAIT_SECONDS = 60.0
"""How long a start waits for the jobs to run when the server leads from its start."""

ADMISSION_INTERVAL_SECONDS = 1.0
WATCH_INTERVAL_SECONDS = 0.25


class JobDuty:
    """The job service of this server while it runs the jobs (:attr:`service`, else None)."""

    def __init__(
        self,
        build: Callable[[Fence | None], JobService],
        background: Background,
        leadership: Leadership | None,
        *,
        grace_seconds: float = TAKEOVER_GRACE_SECONDS,
    ) -> None:
        """``build(fence)`` makes a job service whose writes pass ``fence``; ``leadership``:
        None for a server alone on its database (it always runs the jobs)."""
        self._build = build
        self._background = background
        self._leadership = leadership
        self._grace = grace_seconds
        self.service: JobService | None = None
        self._unclosed: JobService | None = None  # a term's, cut short by the server's stop
        self._term_began = asyncio.Event()  # the first term runs the jobs (or failed to)

    async def load(self) -> None:
        """A server alone on its database: build its job service and read its jobs (before
        the ports open, so that the first request finds them). Does nothing for a server
        sharing a database: it reads them when it takes the lead."""
        if self._leadership is None:
            service = self._build(None)
            await service.load()
            self.service = service

    async def start(self) -> None:
        """Start running the jobs: at once when alone (reconciled before this returns, as
        every start); otherwise follow the leadership in the background — a server that
        leads from its start returns once its first term runs them (bounded by
        :data:`FIRST_TERM_WAIT_SECONDS`), so that its first requests find them."""
        if self._leadership is None:
            assert self.service is not None, "load() first"
            await self.service.lifecycle.reconcile()
            self._background.loop(self._serve(self.service, until=None), "job-duty")
            return
        self._background.loop(self._follow(self._leadership), "job-duty")
        if self._leadership.leading:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIRST_TERM_WAIT_SECONDS + self._grace):
                    await self._term_began.wait()

    async def close(self) -> None:
        """At stop, after the background work ended: commit what the job writer still has."""
        service, self.service, self._unclosed = self.service or self._unclosed, None, None
        if service is not None:
            await service.jobs.close()

    @staticmethod
    async def _serve(service: JobService, *, until: asyncio.Task[None] | None) -> None:
        """Run ``service``'s admission loop and dispatch watch until ``until`` ends (for ever
        without one) or one of them fails (logged); cancelled, they are cancelled with it."""
        loops = [
            asyncio.create_task(service.run(interval=ADMISSION_INTERVAL_SECONDS), name="admission"),
            asyncio.create_task(
                service.lifecycle.watch(interval=WATCH_INTERVAL_SECONDS), name="dispatch-watch"
            ),
        ]
        try:
            ends = [*loops, *([] if until is None else [until])]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            for loop in loops:
                if loop.done() and not loop.cancelled() and loop.exception() is not None:
                    log.error("the job loop %s failed", loop.get_name(), exc_info=loop.exception())
        finally:
            for loop in loops:
                loop.cancel()
            for loop in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop

    async def _follow(self, leadership: Leadership) -> None:
        """Run the jobs during each term of this server as leader (a loop of the server)."""
        while True:
            if leadership.epoch is None:
                await leadership.changed()
                continue
            epoch = leadership.epoch
            lost = asyncio.create_task(_until_not(leadership, epoch), name="job-duty-term")
            try:
                await self._term(epoch, lost)
            except Exception:  # the database went away while it read the jobs…: try again
                log.exception("term %d: running the jobs failed; trying again", epoch)
                self._term_began.set()
                await asyncio.sleep(self._grace)
            finally:
                lost.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lost

    async def _term(self, epoch: int, lost: asyncio.Task[None]) -> None:
        """Run the jobs for the term ``epoch`` until ``lost`` ends (the term is over)."""
        assert self._leadership is not None
        if not self._leadership.handed_over:
            log.info(
                "term %d: the previous leader did not step down; waiting %g s for what it began",
                epoch,
                self._grace,
            )
            await asyncio.wait([lost], timeout=self._grace)
            if lost.done():
                return
        service = self._build(fence(epoch))
        try:
            await service.load()
            await service.lifecycle.reconcile()
            self.service = service
            self._term_began.set()
            log.info("term %d: running %d jobs", epoch, len(service.jobs.jobs))
            await self._serve(service, until=lost)
        except asyncio.CancelledError:
            self._unclosed = service  # the server stops: close() commits after its work ended
            raise
        finally:
            self.service = None
            if self._unclosed is not service:
                log.info("term %d over: this server no longer runs the jobs", epoch)
                await service.jobs.close()


async def _until_not(leadership: Leadership, epoch: int) -> None:
    """Return once ``leadership`` no longer has the term ``epoch``."""
    while leadership.epoch == epoch:
        await leadership.changed()
