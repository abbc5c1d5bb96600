"""Holds and their GPUs (``holds``, ``hold_gpus``), written by the hold journal's committer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Row, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql

from apportion.store import notices, schema
from apportion.store.db import Database

GpuTriple = tuple[str, str, str]  # (cluster_id, node_id, gpu_id)

HOLD_TOPIC = "hold"
"""The notices of hold changes (:mod:`apportion.store.notices`): ``insert``, ``delete`` and
``renew``, each followed by allocation ids."""


@dataclass(frozen=True)
class HoldRow:
    """A ``holds`` row; ``placements`` is the JSON text the journal encoded, ``owner`` the id of
    the key that made it, ``account`` and ``user_name`` whose it is."""

    allocation_id: str
    owner: str | None
    request_id: str | None
    policy_uri: str
    placements: str
    created_at: float
    expires_at: float
    kind: str
    account: str
    user_name: str | None


@dataclass(frozen=True)
class HoldChange:
    """One change handed to the committer: a new hold (``row`` and its ``gpus``), the end of
    a hold, or a hold's new lease end (``expires_at``)."""

    kind: Literal["insert", "delete", "renew"]
    allocation_id: str
    row: HoldRow | None = None
    gpus: tuple[GpuTriple, ...] = ()
    expires_at: float = 0.0


@dataclass
class _Net:
    """A batch by its net effect: a hold made and released within the batch is not written, a
    renewal of a hold inserted in the batch changes the inserted row."""

    inserts: dict[str, HoldChange] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    renews: dict[str, float] = field(default_factory=dict)
    expiry_override: dict[str, float] = field(default_factory=dict)

    def add(self, change: HoldChange) -> None:
        aid = change.allocation_id
        if change.kind == "insert":
            self.inserts[aid] = change
        elif change.kind == "delete":
            self.renews.pop(aid, None)
            self.expiry_override.pop(aid, None)
            if self.inserts.pop(aid, None) is None:
                self.deletes.add(aid)
        elif aid in self.inserts:
            self.expiry_override[aid] = change.expires_at
        else:
            self.renews[aid] = change.expires_at


Taken = tuple[GpuTriple, ...]
"""A change's result: for a new hold, the GPUs another server holds already (the hold was not
written: the database arbitrated between replicas); empty for everything written."""

NOT_TAKEN: Taken = ()


def write_changes(conn: Connection, changes: Sequence[HoldChange]) -> list[Taken]:
    """Write a batch of hold changes (in the order they were made) by their net effect, in a
    few multi-row statements: releases first (one ``DELETE … IN``), then new holds (one
    ``executemany`` per table), then renewals; return what each change found taken. Releasing
    first is safe because a GPU can only be held again after the engine released it in memory,
    so its old row is deleted in this batch or an earlier one.

    On PostgreSQL, where several servers share the tables, a GPU may be held by another server
    that this one has not heard of yet: the unique constraint on ``hold_gpus`` decides. GPU
    rows are inserted skipping conflicts (a row another transaction is inserting waits for
    it), and a new hold that did not get all its GPUs is taken out again, its result naming
    the GPUs it lacked; the batch's other changes are written. On SQLite, the one server's
    memory has already decided, and a conflict is an error that rolls the batch back."""
    net = _Net()
    for change in changes:
        net.add(change)
    taken: dict[str, Taken] = {}
    if net.deletes:
        delete_holds(conn, sorted(net.deletes))
    if net.inserts:
        # executemany with one compiled statement per table (SQLAlchemy caches it; a
        # multi-row VALUES of varying length would compile anew for every batch size)
        rows = [change.row for change in net.inserts.values() if change.row is not None]
        conn.execute(
            schema.holds.insert(),
            [
                {
                    "allocation_id": r.allocation_id,
                    "owner": r.owner,
                    "request_id": r.request_id,
                    "policy_uri": r.policy_uri,
                    "placements": r.placements,
                    "created_at": r.created_at,
                    "expires_at": net.expiry_override.get(r.allocation_id, r.expires_at),
                    "kind": r.kind,
                    "account": r.account,
                    "user_name": r.user_name,
                }
                for r in rows
            ],
        )
        gpu_rows = [  # in the GPUs' order: servers inserting at once wait, seldom deadlock
            {"allocation_id": aid, "cluster_id": c, "node_id": n, "gpu_id": g}
            for (c, n, g), aid in sorted(
                ((gpu, aid) for aid, change in net.inserts.items() for gpu in change.gpus)
            )
        ]
        if gpu_rows and conn.dialect.name == "postgresql":
            taken = _insert_gpus_arbitrated(conn, net.inserts, gpu_rows)
        elif gpu_rows:  # a hold of no GPUs (a job of CPU workers) has none
            conn.execute(schema.hold_gpus.insert(), gpu_rows)
    if net.renews:
        conn.execute(
            update(schema.holds)
            .where(schema.holds.c.allocation_id == bindparam("aid"))
            .values(expires_at=bindparam("exp")),
            [{"aid": aid, "exp": exp} for aid, exp in net.renews.items()],
        )
        notices.send(conn, HOLD_TOPIC, "renew", sorted(net.renews))
    notices.send(conn, HOLD_TOPIC, "insert", [aid for aid in net.inserts if aid not in taken])
    return [
        taken.get(c.allocation_id, NOT_TAKEN) if c.kind == "insert" else NOT_TAKEN for c in changes
    ]


def delete_holds(conn: Connection, allocation_ids: list[str]) -> None:
    """Delete these holds and their GPU rows (in the caller's transaction), and tell the other
    servers sharing the database."""
    gpus, holds = schema.hold_gpus, schema.holds
    conn.execute(delete(gpus).where(gpus.c.allocation_id.in_(allocation_ids)))
    conn.execute(delete(holds).where(holds.c.allocation_id.in_(allocation_ids)))
    notices.send(conn, HOLD_TOPIC, "delete", allocation_ids)


def _insert_gpus_arbitrated(
    conn: Connection, inserts: dict[str, HoldChange], gpu_rows: list[dict[str, str]]
) -> dict[str, Taken]:
    """Insert ``gpu_rows`` skipping those whose GPU is held already; take out the new holds
    that missed any (their rows of both tables) and return, per such hold, the GPUs it
    missed."""
    conn.execute(postgresql.insert(schema.hold_gpus).on_conflict_do_nothing(), gpu_rows)
    gpus = schema.hold_gpus
    got: dict[str, set[GpuTriple]] = {}
    for row in conn.execute(
        select(gpus.c.allocation_id, gpus.c.cluster_id, gpus.c.node_id, gpus.c.gpu_id).where(
            gpus.c.allocation_id.in_(list(inserts))
        )
    ):
        got.setdefault(row.allocation_id, set()).add((row.cluster_id, row.node_id, row.gpu_id))
    taken = {
        aid: tuple(g for g in change.gpus if g not in got.get(aid, set()))
        for aid, change in inserts.items()
        if len(got.get(aid, ())) < len(set(change.gpus))
    }
    if taken:
        ids = sorted(taken)
        conn.execute(delete(gpus).where(gpus.c.allocation_id.in_(ids)))
        conn.execute(delete(schema.holds).where(schema.holds.c.allocation_id.in_(ids)))
    return taken


def _hold_row(r: Row[Any]) -> HoldRow:
    return HoldRow(
        r.allocation_id,
        r.owner,
        r.request_id,
        r.policy_uri,
        r.placements,
        float(r.created_at),
        float(r.expires_at),
        r.kind,
        r.account,
        r.user_name,
    )


class HoldRepo:
    """Reads of the hold tables at start, and the deletion of holds that expired while the
    server was down (the hold manager's; every other change goes through the journal)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[HoldRow]:
        """Every stored hold, expired or not."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(schema.holds))).all()
        return [_hold_row(r) for r in rows]

    async def get(self, allocation_id: str) -> HoldRow | None:
        """The stored hold ``allocation_id``, if there is one."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(schema.holds).where(schema.holds.c.allocation_id == allocation_id)
                )
            ).all()
        return next((_hold_row(r) for r in rows), None)

    async def delete(self, allocation_ids: Sequence[str]) -> None:
        """Delete these holds and their GPU rows in one transaction."""
        ids = list(allocation_ids)
        await self._db.write_batch(lambda conn: delete_holds(conn, ids))
