"""The pool's limits (seed 001's ``max_concurrent_jobs``): validated, stored, loaded at start.

Owned by :class:`~apportion.jobs.service.JobService`, which reads ``max_concurrent_jobs`` in
every admission cycle and calls :meth:`PoolLimits.set` for ``PUT /pool/limits`` (then announces
``limits_updated`` and wakes the cycle). Unset (``None``) means unlimited.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from apportion import jsonutil
from apportion.errors import InvalidRequest
from apportion.store import schema
from apportion.store.db import Database

LIMIT_RANGE = (1, 100)  # max_concurrent_jobs, as seed 001 validated it


class PoolLimits:
    """The limits in memory and in the ``pool_limits`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._values: dict[str, Any] = {"max_concurrent_jobs": None}

    async def load(self) -> None:
        """Read the stored limits (call once at start)."""
        async with self._db.read() as conn:
            for row in (await conn.execute(select(schema.pool_limits))).all():
                self._values[row.name] = jsonutil.loads(row.value)

    def get(self, name: str) -> Any:
        """A limit's value; None when unset (unlimited) or unknown."""
        return self._values.get(name)

    def as_dict(self) -> dict[str, Any]:
        """Every limit, a copy (``GET /queue``'s ``limits``)."""
        return dict(self._values)

    async def set(self, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate ``{"max_concurrent_jobs": n}`` (an integer from 1 to 100), commit it and
        return ``(old limits, new limits)``. Raises :class:`InvalidRequest` naming the field."""
        if not isinstance(body, dict) or not body:
            raise InvalidRequest('the body must be {"max_concurrent_jobs": n}', path="body")
        unknown = sorted(set(body) - set(self._values))
        if unknown:
            raise InvalidRequest(
                f"unknown limit(s) {unknown}; known: {sorted(self._values)}",
                path=f"body.{unknown[0]}",
            )
        value = body.get("max_concurrent_jobs", None)
        low, high = LIMIT_RANGE
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidRequest(
                f"max_concurrent_jobs must be an integer from {low} to {high}, not {value!r}",
                path="body.max_concurrent_jobs",
            )
        old = self.as_dict()
        async with self._db.write() as conn:
            stmt = sqlite_insert(schema.pool_limits).values(
                name="max_concurrent_jobs", value=jsonutil.dumps_str(value)
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[schema.pool_limits.c.name], set_={"value": stmt.excluded.value}
                )
            )
        self._values["max_concurrent_jobs"] = value
        return old, self.as_dict()
