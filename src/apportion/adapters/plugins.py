"""Scheduler adapters as plugins: discovered through the Python entry points of the group
``apportion.adapters`` (docs/adapters.md), so that a third-party adapter is a package, not a
fork.

An entry point names a factory: a callable taking nothing and returning an
:class:`~apportion.adapters.base.Adapter`, or ``None`` when the adapter cannot run on this
machine (``slurm`` without ``sbatch``). Apportion's own adapters are entry points of its own
distribution (``pyproject.toml``). A plugin that fails to load or to build is logged and
listed with its error (``GET /plugins``); the server starts without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from apportion.adapters.base import Adapter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "apportion.adapters"


@dataclass(frozen=True)
class AdapterPlugin:
    """One entry point of the group: the adapter's name, where its factory is, the
    distribution that declares it, and whether this server runs it (else why not)."""

    name: str
    module_name: str
    class_name: str
    distribution: str | None
    available: bool
    error: str | None = None

    def public(self) -> dict[str, object]:
        """The plugin as ``GET /plugins`` shows it (seed 000's ``module_name``, ``class_name``)."""
        return {
            "name": self.name,
            "module_name": self.module_name,
            "class_name": self.class_name,
            "distribution": self.distribution,
            "builtin": self.distribution == "apportion",
            "available": self.available,
            "error": self.error,
        }


def load_adapters() -> tuple[dict[str, Adapter], list[AdapterPlugin]]:
    """Every adapter the entry points of :data:`ENTRY_POINT_GROUP` give on this machine, by
    name, and every plugin with what became of it. Two plugins of one name: the first (in
    the order the metadata lists them) is used, the other is listed with an error."""
    adapters: dict[str, Adapter] = {}
    plugins: list[AdapterPlugin] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        adapter, error = _build(point)
        if adapter is not None and point.name in adapters:
            adapter, error = None, f"another plugin already provides the adapter {point.name!r}"
        if adapter is not None:
            adapters[point.name] = adapter
        elif error is not None:
            log.warning("scheduler adapter plugin %r not loaded: %s", point.name, error)
        module, _, attribute = point.value.partition(":")
        plugins.append(
            AdapterPlugin(
                point.name,
                module,
                attribute,
                point.dist.name if point.dist is not None else None,
                adapter is not None,
                error,
            )
        )
    return adapters, plugins


def _build(point: EntryPoint) -> tuple[Adapter | None, str | None]:
    """The adapter ``point``'s factory builds (None when it cannot run here), or the error."""
    try:
        factory = point.load()
        adapter = factory()
    except Exception as exc:  # a third party's code: whatever it raises is its error
        return None, f"{type(exc).__name__}: {exc}"
    if adapter is None:
        return None, None
    if getattr(adapter, "name", None) != point.name:
        return None, f"its adapter is named {getattr(adapter, 'name', None)!r}, not {point.name!r}"
    return adapter, None
