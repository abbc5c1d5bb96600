"""Clusters and their latest metrics (``clusters``, ``cluster_metrics``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select

from apportion.store import notices, schema
from apportion.store.db import Database
from apportion.store.upsert import upsert

CLUSTER_TOPIC = "cluster"
"""The notices of registry changes (:mod:`apportion.store.notices`): ``put`` and ``delete`` of
a cluster, ``metrics`` of a cluster's new metrics, each followed by the cluster's id."""


@dataclass(frozen=True)
class ClusterRow:
    """A stored cluster document (JSON text)."""

    id: str
    document: str


@dataclass(frozen=True)
class MetricsRow:
    """A cluster's latest metrics document (JSON text) and when it was received."""

    cluster_id: str
    document: str
    received_at: float


class RegistryRepo:
    """The registry's storage (:class:`~apportion.registry.service.Registry`); each write is
    one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self) -> tuple[list[ClusterRow], list[MetricsRow]]:
        """Every stored cluster and metrics document, read in one transaction."""
        async with self._db.read() as conn:
            clusters = (await conn.execute(select(schema.clusters))).all()
            metrics = (await conn.execute(select(schema.cluster_metrics))).all()
        return (
            [ClusterRow(r.id, r.document) for r in clusters],
            [MetricsRow(r.cluster_id, r.document, float(r.received_at)) for r in metrics],
        )

    async def put_cluster(self, row: ClusterRow, now: float) -> None:
        """Store a cluster document (inserted, or replaced keeping its ``created_at``)."""
        async with self._db.write() as conn:
            await conn.execute(
                upsert(
                    conn.dialect,
                    schema.clusters,
                    {"id": row.id, "document": row.document, "created_at": now, "updated_at": now},
                    key=["id"],
                    update=["document", "updated_at"],
                )
            )
            await conn.run_sync(notices.send, CLUSTER_TOPIC, "put", [row.id])

    async def delete_cluster(self, cluster_id: str) -> None:
        """Delete a cluster and its metrics in one transaction."""
        async with self._db.write() as conn:
            await conn.execute(delete(schema.clusters).where(schema.clusters.c.id == cluster_id))
            await conn.execute(
                delete(schema.cluster_metrics).where(
                    schema.cluster_metrics.c.cluster_id == cluster_id
                )
            )
            await conn.run_sync(notices.send, CLUSTER_TOPIC, "delete", [cluster_id])

    async def put_metrics(self, row: MetricsRow) -> None:
        """Store a cluster's latest metrics document (inserted or replaced)."""
        async with self._db.write() as conn:
            await conn.execute(
                upsert(
                    conn.dialect,
                    schema.cluster_metrics,
                    {
                        "cluster_id": row.cluster_id,
                        "document": row.document,
                        "received_at": row.received_at,
                    },
                    key=["cluster_id"],
                    update=["document", "received_at"],
                )
            )
            await conn.run_sync(notices.send, CLUSTER_TOPIC, "metrics", [row.cluster_id])

    async def cluster(self, cluster_id: str) -> tuple[ClusterRow | None, MetricsRow | None]:
        """The stored cluster ``cluster_id`` and its metrics, each None where missing."""
        c, m = schema.clusters, schema.cluster_metrics
        async with self._db.read() as conn:
            found = (await conn.execute(select(c).where(c.c.id == cluster_id))).first()
            measured = (await conn.execute(select(m).where(m.c.cluster_id == cluster_id))).first()
        return (
            None if found is None else ClusterRow(found.id, found.document),
            None
            if measured is None
            else MetricsRow(measured.cluster_id, measured.document, float(measured.received_at)),
        )
