"""The durable record of holds: each change committed before it is acknowledged.

:class:`HoldJournal` is the hold manager's writer: it snapshots a change (the hold's row, its
placements encoded once by :func:`encode_placements`) and hands it to a
:class:`~apportion.store.committer.GroupCommitter`, which writes the changes made while a
commit is under way together, by their net effect (:func:`apportion.store.repos.holds.write_changes`),
and follows the committer's rule: order kept, a handed-over change written even if its caller is
cancelled, a failed batch failing all its callers and writing nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from apportion import jsonutil
from apportion.allocation.hold import Hold
from apportion.engine.decisions import Placement, placements_json
from apportion.ownership import DEFAULT_ACCOUNT
from apportion.store.committer import GroupCommitter
from apportion.store.db import Database
from apportion.store.repos.holds import HoldChange, HoldRow, Taken, write_changes


def encode_placements(placements: Sequence[Placement]) -> str:
    """A hold's placements as the JSON text of its ``holds`` row."""
    return jsonutil.dumps_str(placements_json(placements))


def decode_placements(text: str) -> tuple[Placement, ...]:
    """A ``holds`` row's placements, as :func:`encode_placements` wrote them."""
    return tuple(Placement.from_json(p) for p in jsonutil.loads(text))


def _row(hold: Hold) -> HoldRow:
    """The ``holds`` row of a hold as it is now (a hold without an owner is the server's, in
    the default account with no user)."""
    owner = hold.owner
    return HoldRow(
        hold.allocation_id,
        None if owner is None else owner.key_id,
        hold.request_id,
        hold.policy_uri,
        encode_placements(hold.placements),
        hold.created_at,
        hold.expires_at,
        hold.kind,
        DEFAULT_ACCOUNT if owner is None else owner.account,
        None if owner is None else owner.user,
    )


class HoldJournal:
    """Owned by :class:`~apportion.allocation.holds.HoldManager`; :meth:`close` (the manager's)
    waits for what was handed over. Each method hands its change over when it is called (it is
    not a coroutine) and returns what to await for the commit, so the journal's order is the
    order of the changes in memory (the net-effect rule relies on it)."""

    def __init__(self, db: Database) -> None:
        self._committer: GroupCommitter[HoldChange, Taken] = GroupCommitter(
            db, write_changes, name="hold-journal"
        )

    async def close(self) -> None:
        """Refuse new changes and wait for those handed over."""
        await self._committer.close()

    def insert(self, hold: Hold) -> asyncio.Future[list[Taken]]:
        """Record a new hold (resolves once it is committed, with the GPUs another server
        held already — then nothing was written — or nothing)."""
        change = HoldChange("insert", hold.allocation_id, _row(hold), tuple(hold.gpu_keys))
        return self._committer.submit([change])

    def delete(self, allocation_ids: list[str]) -> asyncio.Future[list[Taken]]:
        """Record that holds ended (resolves once committed)."""
        return self._committer.submit([HoldChange("delete", aid) for aid in allocation_ids])

    def renew(self, allocation_id: str, expires_at: float) -> asyncio.Future[list[Taken]]:
        """Record a hold's new lease end (resolves once committed)."""
        return self._committer.submit([HoldChange("renew", allocation_id, expires_at=expires_at)])
