"""The pool's limits (seed 001's ``max_concurrent_jobs``): validated, stored, loaded at start.

Owned by :class:`~apportion.jobs.service.JobService`, which reads ``max_concurrent_jobs`` in
every admission cycle and calls :meth:`PoolLimits.set` for ``PUT /pool/limits`` (then announces
``limits_updated`` and wakes the cycle). Unset (``None``) means unlimited.
"""

from __future__ import annotations

from typing import Any

from apportion import jsonutil
from apportion.errors import InvalidRequest
from apportion.store.db import Database
from apportion.store.repos.pool_limits import PoolLimitRepo

LIMIT_RANGE = (1, 100)  # max_concurrent_jobs, as seed 001 validated it


class PoolLimits:
    """The limits in memory and in the ``pool_limits`` table."""

    def __init__(self, db: Database) -> None:
        self._repo = PoolLimitRepo(db)
        self._values: dict[str, Any] = {"max_concurrent_jobs": None}

    async def load(self) -> None:
        """Read the stored limits (call once at start)."""
        for name, value in (await self._repo.all()).items():
            self._values[name] = jsonutil.loads(value)

    def get(self, name: str) -> Any:
        """A limit's value; None when unset (unlimited) or unknown."""
        return self._values.get(name)

    def as_dict(self) -> dict[str, Any]:
        """Every limit, a copy (``GET /queue``'s ``limits``)."""
        return dict(self._values)

    async def set(self, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate ``{"max_concurrent_jobs": n}`` (an integer from 1 to 100, or ``null``: back
        to unlimited), commit it and return ``(old limits, new limits)``. Raises
        :class:`InvalidRequest` naming the field."""
        if not isinstance(body, dict) or not body:
            raise InvalidRequest('the body must be {"max_concurrent_jobs": n}', path="body")
        unknown = sorted(set(body) - set(self._values))
        if unknown:
            raise InvalidRequest(
                f"unknown limit(s) {unknown}; known: {sorted(self._values)}",
                path=f"body.{unknown[0]}",
            )
        value = body["max_concurrent_jobs"]
        low, high = LIMIT_RANGE
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high
        ):
            raise InvalidRequest(
                f"max_concurrent_jobs must be an integer from {low} to {high}, or null for"
                f" unlimited, not {value!r}",
                path="body.max_concurrent_jobs",
            )
        old = self.as_dict()
        await self._repo.put("max_concurrent_jobs", jsonutil.dumps_str(value))
        self._values["max_concurrent_jobs"] = value
        return old, self.as_dict()
