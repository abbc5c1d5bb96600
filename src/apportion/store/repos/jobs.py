"""Jobs and their status histories (``jobs``, ``job_statuses``), written by the job writer's
committer."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Update, bindparam, delete, func, select, update

from apportion.store import schema
from apportion.store.counters import raise_counter
from apportion.store.db import Database
from apportion.store.repos.holds import delete_holds
from apportion.store.turns import Fence
from apportion.store.upsert import upsert

DELETED_SEQ_COUNTER = "deleted_job_seq"
"""The ``counters`` entry holding the highest ``seq`` of a deleted job."""


@dataclass(frozen=True)
class JobRow:
    """A ``jobs`` row; ``config``, ``allocation``, ``resource_usage`` and ``decision`` are JSON
    text, ``status`` the status's value, ``cancel_requested`` 0 or 1; ``owner`` is the id of
    the key that submitted it, ``account`` and ``user_name`` whose it is."""

    job_id: str
    seq: int
    queue: str
    name: str
    status: str
    priority: int
    config: str
    owner: str | None
    created_at: float
    allocation: str | None
    allocation_id: str | None
    adapter: str | None
    dispatch_token: str | None
    scheduler_job_id: str | None
    reason_code: str | None
    reason: str | None
    bypassed: int
    start_time: float | None
    end_time: float | None
    return_code: int | None
    failed_reason: str | None
    resource_usage: str | None
    decision: str | None
    cancel_requested: int
    account: str
    user_name: str | None
    runs: int
    preempted_by: str | None
    exit_codes: str | None
    cleaned: int
    array_job_id: str | None
    array_task_id: int | None


_COLUMNS = tuple(f.name for f in fields(JobRow))


@dataclass(frozen=True)
class StatusEntry:
    """One entry of a job's status history (a ``job_statuses`` row)."""

    job_id: str
    status: str
    time: float
    reason: str | None


@dataclass(frozen=True)
class JobChange:
    """One change handed to the committer: the job's whole row as it was when the change was
    made (``new``: its first row, an INSERT), for a status change its history entry, and the
    holds its end releases (deleted in the same transaction as the end)."""

    row: JobRow
    history: StatusEntry | None = None
    new: bool = False
    released_holds: tuple[str, ...] = ()
    account_usage: UsageRow | None = None  # the account's usage with the job's run (its end)


@dataclass(frozen=True)
class UsageRow:
    """An ``account_usage`` row: the account's ended jobs' usage, decayed to ``as_of``."""

    account: str
    gpu_seconds: float
    cpu_seconds: float
    as_of: float


def _values(row: JobRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _COLUMNS}


def fenced_writes(fence: Fence | None) -> Callable[[Connection, Sequence[JobChange]], list[None]]:
    """:func:`write_changes`, after ``fence`` (when given) let the transaction write."""

    def write(conn: Connection, changes: Sequence[JobChange]) -> list[None]:
        if fence is not None:
            fence(conn)
        return write_changes(conn, changes)

    return write


_UPDATED = [name for name in _COLUMNS if name != "job_id"]


@functools.cache
def _update_statement() -> Update:
    """The UPDATE of a job's whole row, built once (bind names may not be column names in an
    UPDATE's SET: they are prefixed)."""
    return (
        update(schema.jobs)
        .where(schema.jobs.c.job_id == bindparam("b_job_id"))
        .values({name: bindparam(f"v_{name}") for name in _UPDATED})
    )


def write_changes(conn: Connection, changes: Sequence[JobChange]) -> list[None]:
    """Write a batch of job changes with the effect of writing them one by one: first rows are
    inserted first (a job's first change is awaited before its next is handed over), then the
    newest row of every other job wins (each row is the job's full state, taken in order), then
    the history entries, in order, the accounts' usage (the newest row of each) and the holds
    the changes release (a job's end, its account's usage and the release of its GPUs are one
    transaction: no crash can leave one without the others)."""
    inserts = [_values(c.row) for c in changes if c.new]
    newest = {c.row.job_id: c.row for c in changes if not c.new}  # later rows win
    history = [
        {"job_id": h.job_id, "status": h.status, "time": h.time, "reason": h.reason}
        for c in changes
        if (h := c.history) is not None
    ]
    if inserts:
        conn.execute(schema.jobs.insert(), inserts)
    if newest:
        params: list[dict[str, Any]] = [
            {"b_job_id": row.job_id, **{f"v_{name}": getattr(row, name) for name in _UPDATED}}
            for row in newest.values()
        ]
        conn.execute(_update_statement(), params)
    if history:
        conn.execute(schema.job_statuses.insert(), history)
    usage = {c.account_usage.account: c.account_usage for c in changes if c.account_usage}
    for row in usage.values():  # the newest row of each account wins
        values = {
            "account": row.account,
            "gpu_seconds": row.gpu_seconds,
            "cpu_seconds": row.cpu_seconds,
            "as_of": row.as_of,
        }
        conn.execute(
            upsert(
                conn.dialect,
                schema.account_usage,
                values,
                key=("account",),
                update=("gpu_seconds", "cpu_seconds", "as_of"),
            )
        )
    released = sorted({aid for c in changes for aid in c.released_holds})
    if released:
        delete_holds(conn, released)
    return [None] * len(changes)


class JobRepo:
    """Reads of the job tables and the deletion of a job (the job book's; every other change
    goes through the job writer)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[JobRow]:
        """Every stored job, in no particular order."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(schema.jobs))).all()
        return [JobRow(**{name: getattr(r, name) for name in _COLUMNS}) for r in rows]

    async def usage(self) -> list[UsageRow]:
        """Every account's stored usage (``account_usage``)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(schema.account_usage))).all()
        return [UsageRow(r.account, r.gpu_seconds, r.cpu_seconds, r.as_of) for r in rows]

    async def max_seq(self) -> int:
        """The highest submission ``seq`` ever given: of a stored job, or of a deleted one
        (so that a job's number — seed 000's integer job id — names no other job later);
        0 before the first."""
        counters = schema.counters
        async with self._db.read() as conn:
            top = (await conn.execute(select(func.max(schema.jobs.c.seq)))).scalar()
            deleted = (
                await conn.execute(
                    select(counters.c.value).where(counters.c.name == DELETED_SEQ_COUNTER)
                )
            ).scalar()
        return max(int(top or 0), int(deleted or 0))

    async def history(self, job_id: str) -> list[StatusEntry]:
        """The job's status history, oldest first (as committed: the job writer's
        ``settled`` first if pending changes must be included)."""
        query = (
            select(schema.job_statuses)
            .where(schema.job_statuses.c.job_id == job_id)
            .order_by(schema.job_statuses.c.id)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [StatusEntry(r.job_id, r.status, float(r.time), r.reason) for r in rows]

    async def remove(self, job_id: str) -> None:
        """Delete the job and its history in one transaction, keeping its ``seq`` as the
        highest deleted one if it is (see :meth:`max_seq`)."""
        async with self._db.write() as conn:
            seq = (
                await conn.execute(select(schema.jobs.c.seq).where(schema.jobs.c.job_id == job_id))
            ).scalar()
            if seq is not None:
                await raise_counter(conn, DELETED_SEQ_COUNTER, int(seq))
            await conn.execute(
                delete(schema.job_statuses).where(schema.job_statuses.c.job_id == job_id)
            )
            await conn.execute(delete(schema.jobs).where(schema.jobs.c.job_id == job_id))
