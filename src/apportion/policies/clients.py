"""The two clients a seed-format policy finds in ``settings`` (seed 004).

``settings["cluster_client"]`` and ``settings["cluster_metrics_client"]`` keep
the seed's method names and return conventions, but answer from the server's
registry in memory instead of over HTTP. In-process policies get these objects
directly; sandboxed policies get proxies in their worker that call back into
:class:`RegistryServices` (the sandbox's ``SandboxServices``).
"""

from __future__ import annotations

from typing import Any

from apportion.errors import ApportionError
from apportion.registry.service import Registry


class RegistryServices:
    """Registry reads for policies; synchronous, safe to call from a worker thread."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def read_cluster(self, cluster_id: str) -> tuple[bool, Any]:
        try:
            return True, self._registry.get_cluster(str(cluster_id))
        except ApportionError as exc:
            return False, exc.message

    def execute_query(self, query: Any) -> tuple[bool, Any]:
        try:
            return True, self._registry.query_clusters(query)
        except ApportionError as exc:
            return False, exc.message

    def get_cluster_metrics(self, cluster_id: str) -> Any:
        try:
            return self._registry.get_metrics(str(cluster_id))
        except ApportionError as exc:
            raise LookupError(exc.message) from None

    def query_cluster_metrics(self, query: Any) -> list[Any]:
        return self._registry.query_metrics(query)


class ClusterClient:
    """The seed's ``ClusterClient``: ``read_cluster`` and ``execute_query`` return ``(ok, value)``."""

    def __init__(self, services: RegistryServices) -> None:
        self._services = services

    def read_cluster(self, cluster_id: str) -> tuple[bool, Any]:
        return self._services.read_cluster(cluster_id)

    def execute_query(self, query: Any) -> tuple[bool, Any]:
        return self._services.execute_query(query)


class ClusterMetricsClient:
    """The seed's ``GlobalClusterMetricsClient``: returns the data, raises on error."""

    def __init__(self, services: RegistryServices) -> None:
        self._services = services

    def get_cluster(self, cluster_id: str) -> Any:
        return self._services.get_cluster_metrics(cluster_id)

    def query_clusters(self, query_params: Any = None) -> list[Any]:
        return self._services.query_cluster_metrics(query_params or {})
