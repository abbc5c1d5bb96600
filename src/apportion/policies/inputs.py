"""``input_data["cluster_data"]`` built lazily.

A seed-contract policy gets ``{cluster_id: {"data": doc, "cluster_metrics":
metrics}}`` for every candidate (CONTRACTS §3); many read only a few entries, so
the mapping builds an entry only when the policy asks for it. (The built-ins get
the fleet view through the internal protocol instead.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from apportion.registry.service import Registry


class LazyClusterData(Mapping[str, dict[str, Any]]):
    """A read-only mapping over the candidates; values built on first access."""

    def __init__(self, registry: Registry, candidates: Sequence[str]) -> None:
        self._registry = registry
        self._ids = list(candidates)
        self._index: set[str] | None = None  # built on the first lookup
        self._built: dict[str, dict[str, Any]] = {}

    def __getitem__(self, cluster_id: str) -> dict[str, Any]:
        if self._index is None:
            self._index = set(self._ids)
        if cluster_id not in self._index:
            raise KeyError(cluster_id)
        entry = self._built.get(cluster_id)
        if entry is None:
            entry = self._registry.cluster_entry(cluster_id)
            self._built[cluster_id] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def materialise(self) -> dict[str, dict[str, Any]]:
        """A plain dict (for sandboxed policies, which get JSON)."""
        return {cid: self[cid] for cid in self._ids}
