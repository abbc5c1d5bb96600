"""Applications (``applications``) and their runtime configurations per queue
(``app_runtime_configs``): one JSON document each (:class:`~apportion.jobs.applications.
ApplicationBook` is their one owner)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update

from apportion.store import schema
from apportion.store.counters import take_number
from apportion.store.db import Database
from apportion.store.upsert import upsert


@dataclass(frozen=True)
class ApplicationRow:
    """An ``applications`` row; ``document`` is the application as JSON text."""

    id: str
    number: int  # seed 000's integer id: given once, never again
    name: str
    version: str
    document: str


@dataclass(frozen=True)
class RuntimeRow:
    """An ``app_runtime_configs`` row: the application's configuration in one queue."""

    queue: str
    application_id: str
    document: str


class ApplicationRepo:
    """The application book's storage; each write is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> tuple[list[ApplicationRow], list[RuntimeRow]]:
        """Every application, by number, and every runtime configuration."""
        apps, runtimes = schema.applications, schema.app_runtime_configs
        async with self._db.read() as conn:
            app_rows = (await conn.execute(select(apps).order_by(apps.c.seq))).all()
            runtime_rows = (await conn.execute(select(runtimes))).all()
        return (
            [ApplicationRow(r.id, r.seq, r.name, r.version, r.document) for r in app_rows],
            [RuntimeRow(r.queue, r.application_id, r.document) for r in runtime_rows],
        )

    async def insert(
        self, application_id: str, name: str, version: str, document: str, now: float
    ) -> ApplicationRow:
        """Store a new application with the next application number; its row."""
        async with self._db.write() as conn:
            number = await take_number(conn, "applications")
            await conn.execute(
                schema.applications.insert().values(
                    id=application_id,
                    seq=number,
                    name=name,
                    version=version,
                    document=document,
                    created_at=now,
                    updated_at=now,
                )
            )
        return ApplicationRow(application_id, number, name, version, document)

    async def replace_document(self, application_id: str, document: str, now: float) -> None:
        apps = schema.applications
        async with self._db.write() as conn:
            await conn.execute(
                update(apps)
                .where(apps.c.id == application_id)
                .values(document=document, updated_at=now)
            )

    async def delete(self, application_id: str) -> None:
        """Forget an application and (by the foreign key) its runtime configurations."""
        apps = schema.applications
        async with self._db.write() as conn:
            await conn.execute(delete(apps).where(apps.c.id == application_id))

    async def put_runtime(self, row: RuntimeRow, now: float) -> None:
        """Store (or replace) an application's runtime configuration in a queue."""
        async with self._db.write() as conn:
            await conn.execute(
                upsert(
                    conn.dialect,
                    schema.app_runtime_configs,
                    {
                        "queue": row.queue,
                        "application_id": row.application_id,
                        "document": row.document,
                        "updated_at": now,
                    },
                    key=("queue", "application_id"),
                    update=("document", "updated_at"),
                )
            )

    async def delete_runtimes(self, *, queue: str, application_id: str | None = None) -> None:
        """Forget the runtime configurations of ``queue`` (of one application, when given)."""
        runtimes = schema.app_runtime_configs
        statement = delete(runtimes).where(runtimes.c.queue == queue)
        if application_id is not None:
            statement = statement.where(runtimes.c.application_id == application_id)
        async with self._db.write() as conn:
            await conn.execute(statement)
