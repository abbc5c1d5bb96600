"""The pool's limits (``pool_limits``): one JSON value per limit name."""

from __future__ import annotations

from sqlalchemy import select

from apportion.store import schema
from apportion.store.db import Database
from apportion.store.upsert import upsert


class PoolLimitRepo:
    """The pool limits' storage (:class:`~apportion.jobs.pool_limits.PoolLimits`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> dict[str, str]:
        """Every stored limit: name → its value as JSON text."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(schema.pool_limits))).all()
        return {r.name: r.value for r in rows}

    async def put(self, name: str, value: str) -> None:
        """Set one limit (inserted or replaced) in one transaction."""
        async with self._db.write() as conn:
            await conn.execute(
                upsert(
                    conn.dialect,
                    schema.pool_limits,
                    {"name": name, "value": value},
                    key=["name"],
                    update=["value"],
                )
            )
