"""Numbered schema migrations, applied in order, each in its own transaction.

A migration is a function over a synchronous SQLAlchemy connection. The first
one creates the tables of version 1 by name; later ones alter what exists.
The applied versions are recorded in ``schema_migrations``; a database newer
than this code is refused rather than guessed at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Table, inspect, select, text, update
from sqlalchemy.schema import CreateColumn

from apportion.ownership import DEFAULT_ACCOUNT
from apportion.store import schema


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _initial(conn: Connection) -> None:
    schema.metadata.create_all(
        conn,
        tables=[
            schema.clusters,
            schema.cluster_metrics,
            schema.policies,
            schema.policy_contexts,
            schema.holds,
            schema.hold_gpus,
            schema.api_keys,
            schema.events,
        ],
    )


def _queues_and_jobs(conn: Connection) -> None:
    schema.metadata.create_all(
        conn,
        tables=[schema.queues, schema.jobs, schema.job_statuses, schema.pool_limits],
    )


def _add_missing_columns(conn: Connection, table: Table, names: tuple[str, ...]) -> None:
    """Add the columns ``names`` of ``table`` (as :mod:`~apportion.store.schema` declares
    them) that the database's table lacks; a table created by this code has them all."""
    present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column}"))


def _accounts(conn: Connection) -> None:
    """Accounts: every existing key, job and hold moves into the ``default`` account; a key's
    user is its name, a job's and a hold's user is the name of the key that made it."""
    schema.metadata.create_all(conn, tables=[schema.accounts])
    _add_missing_columns(conn, schema.api_keys, ("account", "user_name"))
    _add_missing_columns(conn, schema.jobs, ("account", "user_name"))
    _add_missing_columns(conn, schema.holds, ("account", "user_name"))
    _add_missing_columns(conn, schema.events, ("account",))
    schema.metadata.create_all(conn, tables=[schema.jobs])  # its new index, where missing
    has_default = conn.execute(
        select(schema.accounts.c.name).where(schema.accounts.c.name == DEFAULT_ACCOUNT)
    ).first()
    if has_default is None:
        conn.execute(
            schema.accounts.insert().values(
                name=DEFAULT_ACCOUNT,
                os_user=None,
                description="every key and job made before accounts existed",
                created_at=time.time(),
            )
        )
    keys = schema.api_keys
    conn.execute(update(keys).where(keys.c.user_name.is_(None)).values(user_name=keys.c.name))
    for table, owner in ((schema.jobs, schema.jobs.c.owner), (schema.holds, schema.holds.c.owner)):
        key_name = select(keys.c.name).where(keys.c.id == owner).scalar_subquery()
        conn.execute(
            update(table)
            .where(table.c.user_name.is_(None))
            .where(owner.is_not(None))
            .values(user_name=key_name)
        )


def _fair_share(conn: Connection) -> None:
    """Fair share: each account's shares (1 for those that exist) and its decayed usage."""
    _add_missing_columns(conn, schema.accounts, ("shares",))
    schema.metadata.create_all(conn, tables=[schema.account_usage])


def _preemption(conn: Connection) -> None:
    """Preemption: a job's count of requeued runs and the preemption under way."""
    _add_missing_columns(conn, schema.jobs, ("runs", "preempted_by"))


def _files(conn: Connection) -> None:
    """Files: uploaded inputs and jobs' outputs (their content is in the data dir)."""
    schema.metadata.create_all(conn, tables=[schema.files])


def _applications(conn: Connection) -> None:
    """Applications and their runtime configurations per queue; queues get numbers of their
    own (seed 000's integer ids), the existing ones in the order they were created."""
    tables = [schema.counters, schema.applications, schema.app_runtime_configs]
    schema.metadata.create_all(conn, tables=tables)
    _add_missing_columns(conn, schema.queues, ("seq",))
    queues = schema.queues
    unnumbered = conn.execute(
        select(queues.c.id).where(queues.c.seq.is_(None)).order_by(queues.c.created_at)
    ).scalars()
    number = 0
    for number, queue_id in enumerate(list(unnumbered), start=1):
        conn.execute(update(queues).where(queues.c.id == queue_id).values(seq=number))
    if number:
        conn.execute(schema.counters.insert().values(name="queues", value=number))
    next(i for i in queues.indexes if i.name == "ux_queues_seq").create(conn, checkfirst=True)


def _exit_codes_and_cleaning(conn: Connection) -> None:
    """A job's workers' exit codes, and whether its working directory was cleaned."""
    _add_missing_columns(conn, schema.jobs, ("exit_codes", "cleaned"))


def _arrays(conn: Connection) -> None:
    """Job arrays: the array a job is a task of, and its index."""
    _add_missing_columns(conn, schema.jobs, ("array_job_id", "array_task_id"))
    index = next(i for i in schema.jobs.indexes if i.name == "ix_jobs_array")
    index.create(conn, checkfirst=True)


def _leadership(conn: Connection) -> None:
    """Servers sharing a database: which leads, where it is reached, its term."""
    schema.metadata.create_all(conn, tables=[schema.leadership])


def _policy_code(conn: Connection) -> None:
    """Uploaded policies' code in the database, for every server sharing it."""
    _add_missing_columns(conn, schema.policies, ("code_filename", "code_archive"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial),
    Migration(2, "queues, jobs, status histories, pool limits", _queues_and_jobs),
    Migration(3, "accounts; the account and user of keys, jobs, holds and events", _accounts),
    Migration(4, "fair share: account shares and decayed usage", _fair_share),
    Migration(5, "preemption: a job's requeued runs and its preemptor", _preemption),
    Migration(6, "files: uploaded inputs and jobs' outputs", _files),
    Migration(7, "applications, their runtime configurations, queue numbers", _applications),
    Migration(8, "jobs: each worker's exit code, cleaned", _exit_codes_and_cleaning),
    Migration(9, "jobs: the array a job is a task of", _arrays),
    Migration(10, "the leader of the servers sharing a database", _leadership),
    Migration(11, "uploaded policies' code in the database", _policy_code),
)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Apportion; upgrade before using it."""


def current_version(conn: Connection) -> int:
    """The highest applied migration, 0 for an empty database."""
    schema.metadata.create_all(conn, tables=[schema.schema_migrations])
    versions = conn.execute(select(schema.schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


def migrate(conn: Connection) -> list[int]:
    """Apply every migration newer than the database; return the versions applied."""
    have = current_version(conn)
    latest = MIGRATIONS[-1].version
    if have > latest:
        raise SchemaTooNew(
            f"database schema version {have} is newer than this Apportion supports ({latest}); "
            "upgrade Apportion or point --db at another database"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= have:
            continue
        migration.apply(conn)
        conn.execute(
            schema.schema_migrations.insert().values(
                version=migration.version, name=migration.name, applied_at=time.time()
            )
        )
        applied.append(migration.version)
    return applied
