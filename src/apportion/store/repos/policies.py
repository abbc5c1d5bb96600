"""Uploaded policies and every policy's persistent context (``policies``, ``policy_contexts``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update

from apportion.store import schema
from apportion.store.db import Database
from apportion.store.upsert import upsert

DELETED = "deleted"  # the ``source`` of a deleted policy's tombstone row


@dataclass(frozen=True)
class PolicyRow:
    """A ``policies`` row; ``record`` is the stored record as JSON text."""

    uri: str
    name: str
    version: str
    release_tag: str
    record: str
    code_path: str | None
    code_sha256: str | None
    source: str
    created_at: float


class PolicyRepo:
    """The policy store's and the policy runtime's storage; each write is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[PolicyRow]:
        """Every stored policy."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(schema.policies))).all()
        return [PolicyRow(**r._mapping) for r in rows]

    async def insert(self, row: PolicyRow) -> None:
        """Store a new policy (its URI must be new)."""
        async with self._db.write() as conn:
            await conn.execute(
                schema.policies.insert().values(
                    uri=row.uri,
                    name=row.name,
                    version=row.version,
                    release_tag=row.release_tag,
                    record=row.record,
                    code_path=row.code_path,
                    code_sha256=row.code_sha256,
                    source=row.source,
                    created_at=row.created_at,
                )
            )

    async def delete(self, uri: str) -> None:
        """Turn the policy into a tombstone (``source`` ``"deleted"``, no code path: its URI
        stays taken for good) and delete its context, in one transaction."""
        async with self._db.write() as conn:
            await conn.execute(
                update(schema.policies)
                .where(schema.policies.c.uri == uri)
                .values(source=DELETED, code_path=None)
            )
            await conn.execute(
                delete(schema.policy_contexts).where(schema.policy_contexts.c.uri == uri)
            )

    async def context(self, uri: str) -> str | None:
        """The policy's stored context as JSON text; None when it has none."""
        query = select(schema.policy_contexts.c.context).where(schema.policy_contexts.c.uri == uri)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else str(row.context)

    async def put_context(self, uri: str, context: str, now: float) -> None:
        """Store the policy's context (inserted or replaced)."""
        async with self._db.write() as conn:
            await conn.execute(
                upsert(
                    conn.dialect,
                    schema.policy_contexts,
                    {"uri": uri, "context": context, "updated_at": now},
                    key=["uri"],
                    update=["context", "updated_at"],
                )
            )
