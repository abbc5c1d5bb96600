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

from sqlalchemy import Connection, select

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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial),
    Migration(2, "queues, jobs, status histories, pool limits", _queues_and_jobs),
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
