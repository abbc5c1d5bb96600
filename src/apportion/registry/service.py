"""The registry: clusters, their metrics, and the fleet view built over them.

``Registry`` is the one owner of cluster and metrics documents in the server.
It keeps them in memory (reads never touch the database), persists every change
before acknowledging it, and keeps :class:`~apportion.registry.fleet.FleetView`
in step: a document change updates the fleet's structure, a metrics push
updates its state in place.

All methods run on the event loop. Reads are synchronous and cheap; writes are
``async`` because they commit to the store first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from apportion import jsonutil
from apportion.errors import Conflict, InvalidDocument, InvalidRequest, NotFound
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.filters import compile_filter, parse_cluster_filter
from apportion.registry.fleet import FleetView
from apportion.registry.metrics import mark_staleness, validate_metrics_document
from apportion.store.db import Database
from apportion.store.notices import Notice, NoticeFeed
from apportion.store.repos.registry import CLUSTER_TOPIC, ClusterRow, MetricsRow, RegistryRepo

log = logging.getLogger(__name__)

ChangeListener = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Called after a committed change with an event type and its payload."""


def _validated_cluster(body: Any, *, expected_id: str | None = None) -> dict[str, Any]:
    """Validate a cluster document; content errors answer 422 (CONTRACTS §4)."""
    try:
        return validate_cluster_document(body, expected_id=expected_id)
    except InvalidRequest as exc:
        raise InvalidDocument(exc.message, path=exc.path, details=exc.details) from None


@dataclass
class StoredMetrics:
    document: dict[str, Any]
    received_at: float


class Registry:
    """Clusters and metrics, in memory and in the store, mirrored into a fleet view."""

    def __init__(self, db: Database, *, metrics_ttl: float = 60.0) -> None:
        self._repo = RegistryRepo(db)
        self.metrics_ttl = metrics_ttl
        self._clusters: dict[str, dict[str, Any]] = {}
        self._metrics: dict[str, StoredMetrics] = {}
        self._stale: set[str] = set()
        self.fleet = FleetView()
        self.version = 0
        self._listeners: list[ChangeListener] = []
        self._live: list[str] | None = None  # cache of live_cluster_ids

    # ---------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        """Read every stored cluster and metrics document (at start-up)."""
        clusters, metrics = await self._repo.load()
        for cluster in clusters:
            doc = jsonutil.loads(cluster.document)
            self._clusters[cluster.id] = doc
            self._live = None
            self.fleet.set_cluster(doc)
        for row in metrics:
            if row.cluster_id in self._clusters:
                stored = StoredMetrics(jsonutil.loads(row.document), row.received_at)
                self._metrics[row.cluster_id] = stored
        self.refresh_staleness()
        self.version += 1

    def add_listener(self, listener: ChangeListener) -> None:
        """Be told of every committed change (``cluster_updated``, ``metrics_updated``)."""
        self._listeners.append(listener)

    async def _notify(self, event: str, payload: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                await listener(event, payload)
            except Exception:
                log.exception("registry listener failed for %s", event)

    # ---------------------------------------------------------------- clusters
    def has_cluster(self, cluster_id: str) -> bool:
        return cluster_id in self._clusters

    def cluster_ids(self) -> list[str]:
        """Every cluster id, sorted."""
        return sorted(self._clusters)

    def get_cluster(self, cluster_id: str) -> dict[str, Any]:
        """The stored document; :class:`NotFound` when there is none."""
        try:
            return self._clusters[cluster_id]
        except KeyError:
            raise NotFound(
                f"cluster {cluster_id!r} is not registered; list clusters with GET /clusters",
                details={"cluster_id": cluster_id},
            ) from None

    def list_clusters(self) -> list[dict[str, Any]]:
        return [self._clusters[cid] for cid in sorted(self._clusters)]

    def query_clusters(self, query: Any, *, path: str = "query") -> list[dict[str, Any]]:
        """Cluster documents matching a bare filter (CONTRACTS §5); ``{}`` matches all."""
        if query in (None, {}):
            return self.list_clusters()
        predicate = compile_filter(query, path=path)
        return [
            doc
            for cid, doc in sorted(self._clusters.items())
            if predicate(doc, label=f'cluster "{cid}"')
        ]

    def filter_cluster_ids(self, spec: Any, *, path: str = "filter") -> list[str] | None:
        """Ids of clusters matching any accepted filter wrapper; ``None`` when ``spec`` is empty."""
        cluster_filter = parse_cluster_filter(spec, path=path)
        if cluster_filter is None:
            return None
        out = []
        for cid in sorted(self._clusters):
            metrics = self.get_metrics_or_none(cid)
            if cluster_filter.matches(self._clusters[cid], metrics, label=f'cluster "{cid}"'):
                out.append(cid)
        return out

    def live_cluster_ids(self) -> list[str]:
        """Clusters whose ``status`` is ``live`` or absent: the default candidates (a new list,
        computed once per change of the cluster documents)."""
        if self._live is None:
            self._live = [
                cid
                for cid in sorted(self._clusters)
                if self._clusters[cid].get("status") in (None, "live")
            ]
        return list(self._live)

    async def create_cluster(self, body: Any) -> dict[str, Any]:
        doc = _validated_cluster(body)
        if doc["id"] in self._clusters:
            raise Conflict(
                f"cluster {doc['id']!r} exists; replace it with PUT /clusters/{doc['id']}",
                details={"cluster_id": doc["id"]},
            )
        await self._save_cluster(doc, created=True)
        return doc

    async def replace_cluster(self, cluster_id: str, body: Any) -> dict[str, Any]:
        self.get_cluster(cluster_id)
        doc = _validated_cluster(body, expected_id=cluster_id)
        await self._save_cluster(doc, created=False)
        return doc

    async def upsert_cluster(self, body: Any) -> dict[str, Any]:
        """Create or replace (used by the demo and by discovery)."""
        doc = _validated_cluster(body)
        await self._save_cluster(doc, created=doc["id"] not in self._clusters)
        return doc

    async def _save_cluster(self, doc: dict[str, Any], *, created: bool) -> None:
        await self._repo.put_cluster(ClusterRow(doc["id"], jsonutil.dumps_str(doc)), time.time())
        self._set_cluster(doc)
        await self._notify(
            "cluster_updated",
            {"cluster_id": doc["id"], "change": "created" if created else "replaced"},
        )

    def _set_cluster(self, doc: dict[str, Any]) -> None:
        self._clusters[doc["id"]] = doc
        self._live = None
        self.fleet.set_cluster(doc)
        self._apply_metrics_to_fleet(doc["id"])
        self.version += 1

    async def delete_cluster(self, cluster_id: str) -> None:
        self.get_cluster(cluster_id)
        await self._repo.delete_cluster(cluster_id)
        self._drop_cluster(cluster_id)
        await self._notify("cluster_updated", {"cluster_id": cluster_id, "change": "deleted"})

    def _drop_cluster(self, cluster_id: str) -> None:
        del self._clusters[cluster_id]
        self._live = None
        self._metrics.pop(cluster_id, None)
        self._stale.discard(cluster_id)
        self.fleet.remove_cluster(cluster_id)
        self.version += 1

    # ---------------------------------------------------------------- other servers' changes
    def follow(self, feed: NoticeFeed) -> None:
        """Follow the clusters and metrics other servers sharing the database store (their
        notices, :data:`~apportion.store.repos.registry.CLUSTER_TOPIC`), before ``feed``
        starts. What another server changed is applied to this one's view as it is stored; the
        events about it are that server's to send."""
        feed.on(CLUSTER_TOPIC, self._heard, self._resync)

    async def _heard(self, notice: Notice) -> None:
        for cluster_id in notice.words:
            cluster, metrics = await self._repo.cluster(cluster_id)
            self._take_stored(cluster_id, cluster, metrics)

    async def _resync(self) -> None:
        clusters, metrics = await self._repo.load()
        measured = {row.cluster_id: row for row in metrics}
        stored = {row.id: row for row in clusters}
        for cluster_id in sorted(set(self._clusters) | set(stored)):
            self._take_stored(cluster_id, stored.get(cluster_id), measured.get(cluster_id))

    def _take_stored(
        self, cluster_id: str, cluster: ClusterRow | None, metrics: MetricsRow | None
    ) -> None:
        """Make this server's view of ``cluster_id`` what is stored (each step only where it
        differs: a server hears its own notices too)."""
        if cluster is None:
            if cluster_id in self._clusters:
                self._drop_cluster(cluster_id)
            return
        doc = jsonutil.loads(cluster.document)
        if self._clusters.get(cluster_id) != doc:
            self._set_cluster(doc)
        held = self._metrics.get(cluster_id)
        if metrics is not None and (held is None or metrics.received_at > held.received_at):
            self._metrics[cluster_id] = StoredMetrics(
                jsonutil.loads(metrics.document), metrics.received_at
            )
            self._stale.discard(cluster_id)
            self.refresh_staleness()
            self._apply_metrics_to_fleet(cluster_id)
            self.version += 1

    # ---------------------------------------------------------------- metrics
    async def put_metrics(self, cluster_id: str, body: Any) -> dict[str, Any]:
        """Store a pushed metrics document and update the fleet's live columns in place."""
        self.get_cluster(cluster_id)
        doc = validate_metrics_document(body, cluster_id=cluster_id)
        now = time.time()
        await self._repo.put_metrics(MetricsRow(cluster_id, jsonutil.dumps_str(doc), now))
        self._metrics[cluster_id] = StoredMetrics(doc, now)
        self._stale.discard(cluster_id)
        self._apply_metrics_to_fleet(cluster_id)
        self.version += 1
        await self._notify(
            "metrics_updated", {"cluster_id": cluster_id, "timestamp": doc.get("timestamp")}
        )
        return doc

    def get_metrics(self, cluster_id: str) -> dict[str, Any]:
        """The metrics document with ``stale`` and ``age_seconds``; :class:`NotFound` without one."""
        self.get_cluster(cluster_id)
        doc = self.get_metrics_or_none(cluster_id)
        if doc is None:
            raise NotFound(
                f"no metrics for cluster {cluster_id!r} yet; push them with PUT /clusters/{cluster_id}/metrics",
                details={"cluster_id": cluster_id},
            )
        return doc

    def get_metrics_or_none(self, cluster_id: str) -> dict[str, Any] | None:
        stored = self._metrics.get(cluster_id)
        if stored is None:
            return None
        return mark_staleness(
            stored.document,
            received_at=stored.received_at,
            now=time.time(),
            ttl_seconds=self.metrics_ttl,
        )

    def query_metrics(self, query: Any, *, path: str = "query") -> list[dict[str, Any]]:
        """Metrics documents matching a bare filter (paths relative to the metrics document)."""
        docs = [d for cid in sorted(self._metrics) if (d := self.get_metrics_or_none(cid))]
        if query in (None, {}):
            return docs
        predicate = compile_filter(query, path=path)
        return [d for d in docs if predicate(d, label=f'metrics of cluster "{d.get("clusterId")}"')]

    def refresh_staleness(self) -> list[str]:
        """Clear the fleet's live columns of clusters whose metrics passed the TTL; return them."""
        now = time.time()
        newly_stale = []
        for cid, stored in self._metrics.items():
            if now - stored.received_at > self.metrics_ttl and cid not in self._stale:
                self._stale.add(cid)
                newly_stale.append(cid)
                self._apply_metrics_to_fleet(cid)
        if newly_stale:
            self.version += 1
        return newly_stale

    def _apply_metrics_to_fleet(self, cluster_id: str) -> None:
        stored = self._metrics.get(cluster_id)
        stale = cluster_id in self._stale
        self.fleet.apply_metrics(cluster_id, stored.document if stored else None, stale=stale)

    # ---------------------------------------------------------------- snapshots
    def cluster_entry(self, cluster_id: str) -> dict[str, Any]:
        """The seed's ``cluster_data`` value: ``{"data": doc, "cluster_metrics": metrics|None}``."""
        return {
            "data": self._clusters[cluster_id],
            "cluster_metrics": self.get_metrics_or_none(cluster_id),
        }

    def unknown_ids(self, ids: Iterable[str]) -> list[str]:
        return [cid for cid in ids if cid not in self._clusters]


def require_known(registry: Registry, ids: list[str], *, path: str) -> None:
    """:class:`InvalidRequest` naming the unknown cluster ids of a request."""
    unknown = registry.unknown_ids(ids)
    if unknown:
        raise InvalidRequest(
            f"unknown cluster id(s) {', '.join(map(repr, unknown))} in {path}; "
            "registered clusters are listed by GET /clusters",
            path=path,
            details={"unknown": unknown},
        )
