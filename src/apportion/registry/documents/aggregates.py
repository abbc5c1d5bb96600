"""Cluster-level aggregates of a cluster document: ``gpus.count``, ``gpus.memory``,
``vcpus.count`` and ``memory``, as sums over its nodes.

Called by :func:`apportion.registry.documents.cluster.validate_cluster_document` after the nodes are
checked: stated aggregates are type-checked; with valid nodes, absent ones are computed and
stated ones must equal the sum. Problems go to the caller's
:class:`~apportion.registry.fields.FieldErrors`.
"""

from __future__ import annotations

from typing import Any

from apportion.registry.fields import FieldErrors, amount, count, fmt, obj, same

CLUSTER_AGGREGATES: tuple[tuple[str | None, str, bool], ...] = (
    # (group or None for top level, key, is_count)
    ("gpus", "count", True),
    ("gpus", "memory", False),
    ("vcpus", "count", True),
    (None, "memory", False),
)

COMPUTE_HINT = "fix it or leave it out to have it computed"
"""The end of every message about a stated aggregate that does not add up."""


def check_cluster_aggregates(
    out: dict[str, Any], nodes: list[dict[str, Any]] | None, path: str, errs: FieldErrors
) -> None:
    """Type-check stated aggregates; with valid nodes, compute absent ones and check the rest."""
    for group, key, is_count in CLUSTER_AGGREGATES:
        container: dict[str, Any] | None = out
        p = f"{path}.{key}"
        if group is not None:
            p = f"{path}.{group}.{key}"
            if group in out:
                container = obj(out[group], f"{path}.{group}", errs)
            elif nodes:
                container = out[group] = {}
            else:
                container = None
        if container is None:
            continue
        computed = (
            0
            if nodes is None
            else sum((node[group][key] if group is not None else node[key]) for node in nodes)
        )
        if key in container:
            stated = (count if is_count else amount)(container[key], p, errs)
            if stated is not None and nodes and not same(stated, computed):
                errs.add(
                    p,
                    f"{p} is {fmt(stated)} but the nodes add up to {fmt(computed)}; "
                    + COMPUTE_HINT,
                )
        elif nodes:
            container[key] = computed
