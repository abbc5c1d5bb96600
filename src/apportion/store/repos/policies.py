"""Uploaded policies and every policy's persistent context (``policies``, ``policy_contexts``)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import delete, select, update

from apportion.store import notices, schema
from apportion.store.db import Database
from apportion.store.upsert import upsert

DELETED = "deleted"  # the ``source`` of a deleted policy's tombstone row

POLICY_TOPIC = "policy"
"""Notices of policies uploaded (``insert``) and deleted (``delete``), by URI."""


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
        """Every stored policy (without its code)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(*_ROW_COLUMNS))).all()
        return [PolicyRow(**r._mapping) for r in rows]

    async def one(self, uri: str) -> PolicyRow | None:
        """The stored policy ``uri`` (without its code), or None."""
        query = select(*_ROW_COLUMNS).where(schema.policies.c.uri == uri)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else PolicyRow(**row._mapping)

    async def code(self, uri: str) -> tuple[str, bytes] | None:
        """The code of ``uri`` as uploaded (its file name and bytes); None for a policy
        stored before the code was (schema version 11)."""
        columns = schema.policies.c
        query = select(columns.code_filename, columns.code_archive).where(columns.uri == uri)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row.code_filename is None or row.code_archive is None:
            return None
        return str(row.code_filename), bytes(row.code_archive)

    async def insert(self, row: PolicyRow, code: tuple[str, bytes]) -> None:
        """Store a new policy (its URI must be new) with its code as uploaded (file name,
        bytes), and tell the other servers."""
        filename, archive = code
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
                    code_filename=filename,
                    code_archive=archive,
                )
            )
            await conn.run_sync(notices.send, POLICY_TOPIC, "insert", [row.uri])

    async def delete(self, uri: str) -> None:
        """Turn the policy into a tombstone (``source`` ``"deleted"``, no code path: its URI
        stays taken for good) and delete its context, in one transaction."""
        async with self._db.write() as conn:
            await conn.execute(
                update(schema.policies)
                .where(schema.policies.c.uri == uri)
                .values(source=DELETED, code_path=None, code_filename=None, code_archive=None)
            )
            await conn.execute(
                delete(schema.policy_contexts).where(schema.policy_contexts.c.uri == uri)
            )
            await conn.run_sync(notices.send, POLICY_TOPIC, "delete", [uri])

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


_ROW_COLUMNS = [schema.policies.c[f.name] for f in fields(PolicyRow)]
