"""Holds: GPUs reserved by an allocation (``adhoc: false``) for the length of a lease.

Rules this module keeps:

* **No GPU in two holds.** :meth:`HoldManager.reserve` checks and marks the GPUs
  in the fleet view synchronously on the event loop (no ``await`` between the check
  and the mark), and the ``hold_gpus`` table has a unique constraint on
  ``(cluster_id, node_id, gpu_id)``: the second line of defence on SQLite, and the arbiter
  between servers sharing one PostgreSQL (a hold it refuses is :class:`HeldElsewhere`, and
  the stored holds this server did not know are taken into memory).
* **Acknowledged means durable.** :meth:`HoldManager.commit` returns only after the
  hold is committed (group commit through
  :class:`~apportion.allocation.hold_journal.HoldJournal`); a hold that was answered
  survives a crash until its lease ends. A hold whose commit failed, or whose caller
  was cancelled, is undone in memory and in the store.
* **Leases end.** An expired hold is released by :meth:`expire_due` (called by
  the server's background loop) and its GPUs return to the fleet.
* **Servers sharing one PostgreSQL follow each other** (:meth:`follow`): the holds the others
  make, renew and release reach this one's memory and fleet view through change notices, and a
  GPU may then be counted under two holds for a moment (see :meth:`_unmark`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

from apportion.allocation.hold import Hold
from apportion.allocation.hold_journal import HoldJournal, decode_placements
from apportion.engine.decisions import Placement, gpu_keys_of
from apportion.errors import Conflict, Forbidden, HeldElsewhere, UnknownAllocation
from apportion.ownership import Actor, Owner
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey
from apportion.store.db import Database
from apportion.store.notices import Notice, NoticeFeed
from apportion.store.repos.holds import HOLD_TOPIC, HoldRepo, HoldRow, Taken

log = logging.getLogger(__name__)


def unknown_allocation(allocation_id: str) -> UnknownAllocation:
    """The answer for an id with no active hold; REST answers it for another key's hold too,
    so that an answer never tells whether someone else holds that id."""
    return UnknownAllocation(
        f"no active allocation {allocation_id!r}: it was released, its lease ended, "
        "or it never existed",
        details={"allocation_id": allocation_id},
    )


class HoldManager:
    """Owns every hold; mirrors held GPUs into the fleet view."""

    def __init__(
        self,
        db: Database,
        fleet: FleetView,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._clock = clock
        self._repo = HoldRepo(db)
        self._journal = HoldJournal(db)
        self._holds: dict[str, Hold] = {}
        self._marks: Counter[GpuKey] = Counter()  # holds per GPU: >1 only across servers
        self._uncommitted: set[str] = set()  # reserved, not yet known to be stored
        # held while stored holds are read and applied to memory (a notice, a resync, a
        # refused hold): a row read just before its delete committed is
        # taken in before that delete's notice is applied, never after it
        self._applying = asyncio.Lock()

    # ---------------------------------------------------------------- the fleet's marks
    def _mark(self, keys: Sequence[GpuKey]) -> None:
        """Count a hold of ``keys``; mark those it is the first hold of held in the fleet."""
        first = [key for key in keys if self._marks[key] == 0]
        self._marks.update(keys)
        if first:
            self._fleet.set_held(first, True)

    def _unmark(self, keys: Sequence[GpuKey]) -> None:
        """Uncount a hold of ``keys``; free in the fleet those no hold is left on. (A server
        sharing its database with others may know two holds of one GPU for a moment: its own
        reservation, and another server's hold it heard of before the database refused its
        own.)"""
        freed = []
        for key in keys:
            left = self._marks[key] - 1
            if left > 0:
                self._marks[key] = left
            else:
                del self._marks[key]
                freed.append(key)
        if freed:
            self._fleet.set_held(freed, False)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> list[str]:
        """Load unexpired holds into the fleet, drop expired ones; return the dropped ids."""
        now = self._clock()
        expired = []
        for row in await self._repo.all():
            if row.expires_at <= now:
                expired.append(row.allocation_id)
                continue
            self._adopt(row)
        if expired:
            await self._repo.delete(expired)
        return expired

    def _adopt(self, row: HoldRow) -> Hold:
        """Take a stored hold into memory and mark its GPUs held."""
        placements = decode_placements(row.placements)
        hold = Hold(
            row.allocation_id,
            Owner(row.account, row.user_name, row.owner),
            row.request_id,
            row.policy_uri,
            placements,
            gpu_keys_of(placements),
            row.created_at,
            row.expires_at,
            row.kind,
        )
        self._holds[hold.allocation_id] = hold
        self._mark(hold.gpu_keys)
        return hold

    def follow(self, feed: NoticeFeed) -> None:
        """Follow the holds other servers sharing the database make, end and renew (their
        notices, :data:`~apportion.store.repos.holds.HOLD_TOPIC`), before ``feed`` starts."""
        feed.on(HOLD_TOPIC, self._heard, self._resync)

    async def _heard(self, notice: Notice) -> None:
        """Apply a hold notice (ours included: each step is idempotent). A new hold is read
        from the store, so one that ended meanwhile is not taken in."""
        async with self._applying:
            await self._apply(notice)

    async def _apply(self, notice: Notice) -> None:
        if notice.verb == "delete":
            for allocation_id in notice.words:
                self.forget_released(allocation_id)
            return
        for allocation_id in notice.words:
            if notice.verb == "insert" and allocation_id in self._holds:
                continue
            if notice.verb == "renew" and allocation_id not in self._holds:
                continue
            row = await self._repo.get(allocation_id)
            if row is None:
                continue
            known = self._holds.get(allocation_id)
            if known is not None:
                known.expires_at = row.expires_at
            elif row.expires_at > self._clock():
                self._adopt(row)

    async def _resync(self) -> None:
        """Bring the holds in memory in line with the stored ones (the feed's connection was
        made or remade: notices may have been missed): take in those not known, forget those
        no longer stored — but for reservations whose commit is under way."""
        async with self._applying:
            await self._take_stored()

    async def _take_stored(self) -> None:
        settled = {aid for aid in self._holds if aid not in self._uncommitted}
        rows = await self._repo.all()
        stored = {row.allocation_id for row in rows}
        for allocation_id in settled - stored:
            self.forget_released(allocation_id)
        now = self._clock()
        for row in rows:
            known = self._holds.get(row.allocation_id)
            if known is not None:
                known.expires_at = row.expires_at
            elif row.expires_at > now:
                self._adopt(row)

    async def close(self) -> None:
        """Refuse new changes and wait for the journal's pending commits (before the database
        closes)."""
        await self._journal.close()

    # ---------------------------------------------------------------- queries
    def get(self, allocation_id: str) -> Hold:
        hold = self._holds.get(allocation_id)
        if hold is None or hold.expires_at <= self._clock():
            raise unknown_allocation(allocation_id)
        return hold

    def active(self) -> list[Hold]:
        now = self._clock()
        return [h for h in self._holds.values() if h.expires_at > now]

    def held_keys(self) -> set[GpuKey]:
        return {key for hold in self._holds.values() for key in hold.gpu_keys}

    # ---------------------------------------------------------------- changes
    def _reserve(self, keys: Sequence[GpuKey]) -> None:
        with self._fleet.lock:  # policies read the fleet on worker threads
            self._reserve_locked(keys)

    def _reserve_locked(self, keys: Sequence[GpuKey]) -> None:
        taken = [key for key in keys if self._fleet.is_held(key)]
        if len(set(keys)) != len(keys):
            raise Conflict(
                "the placement names a GPU twice", details={"gpus": [list(k) for k in keys]}
            )
        if taken:
            raise Conflict(
                f"{len(taken)} GPU(s) of the placement are held by another allocation or job; "
                "retry the request",
                details={"taken": [list(k) for k in taken]},
            )
        self._mark(keys)

    def reserve(
        self,
        placements: tuple[Placement, ...],
        *,
        lease_seconds: float,
        owner: Owner | None,
        request_id: str | None,
        policy_uri: str,
        kind: str = "allocation",
    ) -> Hold:
        """Mark the placements' GPUs held, now (synchronous: nothing else runs in between);
        :class:`Conflict` if any is taken. Follow with :meth:`commit` before answering."""
        keys = gpu_keys_of(placements)
        self._reserve(keys)
        now = self._clock()
        hold = Hold(
            uuid.uuid4().hex,
            owner,
            request_id,
            policy_uri,
            placements,
            keys,
            now,
            now + lease_seconds,
            kind,
        )
        self._holds[hold.allocation_id] = hold
        self._uncommitted.add(hold.allocation_id)
        return hold

    async def commit(self, hold: Hold) -> None:
        """Make a reserved hold durable; on failure the reservation is undone and the error
        raised. If the caller is cancelled while it waits, the insert is committed all the same
        (the journal's rule), so the hold is undone by a delete handed over after it: nobody
        learnt its id, and its GPUs must not stay held in the store until its lease ends."""
        try:
            taken = (await self._journal.insert(hold))[0]
            self._uncommitted.discard(hold.allocation_id)
        except asyncio.CancelledError:
            self._undo(hold)
            with contextlib.suppress(RuntimeError):  # a closed journal: the server is stopping
                self._journal.delete([hold.allocation_id]).add_done_callback(_log_failure)
            raise
        except BaseException:
            self._undo(hold)
            raise
        if taken:
            self._undo(hold)
            await self._adopt_stored()
            raise HeldElsewhere(
                f"{len(taken)} GPU(s) of the placement were held through another Apportion "
                "server meanwhile; retry the request",
                details={"taken": [list(gpu) for gpu in taken]},
            )

    async def _adopt_stored(self) -> None:
        """Take into memory every unexpired stored hold this server does not know yet
        (other servers made them; their notices may not have arrived), so the next decision
        sees their GPUs held. All of them, not only the holders of the refused GPUs: under
        contention the notices lag, and a server that learns one GPU at a time decides into
        the next taken one (measured: 53 of a window's holds answered Conflict that way)."""
        async with self._applying:
            now = self._clock()
            for row in await self._repo.all():
                if row.allocation_id not in self._holds and row.expires_at > now:
                    self._adopt(row)

    def unreserve(self, hold: Hold) -> None:
        """Give back the GPUs of a reservation that was never committed (nothing is stored:
        synchronous, so no other decision sees them held in between)."""
        self._undo(hold)

    def _undo(self, hold: Hold) -> None:
        self._uncommitted.discard(hold.allocation_id)
        self._holds.pop(hold.allocation_id, None)
        self._unmark(hold.gpu_keys)

    def _visible_and_changeable(self, allocation_id: str, actor: Actor | None) -> Hold:
        """The active hold ``allocation_id`` if ``actor`` (None: the server) may change it.
        A hold ``actor`` may not see answers as an unknown id (no oracle of who holds what);
        one it sees but may not change (another user's of its account) is
        :class:`Forbidden`."""
        hold = self.get(allocation_id)
        if actor is None or actor.may_change(hold.owner):
            return hold
        if not actor.may_see(hold.owner):
            raise unknown_allocation(allocation_id)
        raise Forbidden(
            f"allocation {hold.allocation_id} was made by another user of account "
            f"{actor.account!r}; only that user or an admin key may change it",
            details={"allocation_id": hold.allocation_id},
        )

    async def release(self, allocation_id: str, *, actor: Actor | None = None) -> Hold:
        """End a hold now and free its GPUs (``actor`` None: the server does it)."""
        hold = self._visible_and_changeable(allocation_id, actor)
        await self._forget([hold])
        return hold

    async def renew(
        self, allocation_id: str, lease_seconds: float, *, actor: Actor | None = None
    ) -> Hold:
        """Extend a hold's lease to ``lease_seconds`` from now (``actor`` None: the
        server)."""
        hold = self._visible_and_changeable(allocation_id, actor)
        expires_at = self._clock() + lease_seconds

        await self._journal.renew(allocation_id, expires_at)
        hold.expires_at = expires_at
        return hold

    def forget_released(self, allocation_id: str) -> None:
        """Drop a hold whose rows another writer deleted (a job's end deletes its hold in the
        job's own transaction) and give its GPUs back; nothing is written. An unknown id is
        ignored (already released)."""
        hold = self._holds.pop(allocation_id, None)
        if hold is not None:
            self._unmark(hold.gpu_keys)

    async def expire_due(self) -> list[Hold]:
        """Release every hold whose lease has ended; return them."""
        now = self._clock()
        due = [h for h in self._holds.values() if h.expires_at <= now]
        if due:
            await self._forget(due)
        return due

    async def _forget(self, holds: list[Hold]) -> None:
        """End ``holds``: their GPUs are free at once (a decision may take them before the
        delete is committed: the journal writes in order). If the delete fails (the database
        is away), the holds are taken back, so memory and store agree and the next expiry or
        release tries again."""
        ids = [h.allocation_id for h in holds]
        for hold in holds:
            self._holds.pop(hold.allocation_id, None)
            self._unmark(hold.gpu_keys)
        try:
            await self._journal.delete(ids)
        except asyncio.CancelledError:
            raise  # handed over means written: the delete goes on
        except Exception:
            for hold in holds:
                if hold.allocation_id not in self._holds:
                    self._holds[hold.allocation_id] = hold
                    self._mark(hold.gpu_keys)
            raise


def _log_failure(done: asyncio.Future[list[Taken]]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("undoing a cancelled hold failed", exc_info=done.exception())
