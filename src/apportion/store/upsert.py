"""The one dialect-specific statement of the store: insert-or-update by primary key.

SQLite and PostgreSQL both spell it ``INSERT … ON CONFLICT (key) DO UPDATE SET …``, but
SQLAlchemy builds it from each dialect's own ``insert``; :func:`upsert` picks the one of the
connection it runs on, so a repository that calls it runs unchanged on either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.dml import Insert


def upsert(
    dialect: Dialect,
    table: Table,
    values: Mapping[str, Any],
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> Insert:
    """An INSERT of ``values`` into ``table`` that, when a row with the same ``key`` columns
    exists, sets that row's ``update`` columns to the new values instead (the other columns,
    e.g. ``created_at``, keep what they had). Raises ``ValueError`` for another dialect."""
    insert: Any
    if dialect.name == "sqlite":
        insert = sqlite.insert
    elif dialect.name == "postgresql":
        insert = postgresql.insert
    else:
        raise ValueError(f"no upsert for the {dialect.name!r} dialect (sqlite or postgresql)")
    statement = insert(table).values(dict(values))
    result: Insert = statement.on_conflict_do_update(
        index_elements=[table.c[name] for name in key],
        set_={name: statement.excluded[name] for name in update},
    )
    return result
