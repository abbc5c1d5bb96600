"""The id rule of cluster documents: cluster and node ids, and the cluster id against the URL's.

Called by :func:`apportion.registry.documents.cluster.validate_cluster_document` for the cluster's
``id`` and by :mod:`apportion.registry.documents.nodes` for every node's ``id``. Problems are
recorded in the caller's :class:`~apportion.registry.fields.FieldErrors`, never raised here.
"""

from __future__ import annotations

import re
from typing import Any

from apportion.registry.fields import FieldErrors, text

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Cluster and node ids (full match)."""


def check_cluster_id(
    out: dict[str, Any], path: str, expected_id: str | None, errs: FieldErrors
) -> None:
    """Check ``out["id"]`` (filled from ``expected_id``, the URL's id, when it is absent)."""
    if "id" not in out:
        if expected_id is not None:
            out["id"] = expected_id
            return
        errs.add(f"{path}.id", f"{path}.id is required: the cluster's unique id")
        return
    cid = out["id"]
    if check_id_value(cid, f"{path}.id", errs) and expected_id is not None and cid != expected_id:
        errs.add(
            f"{path}.id",
            f"{path}.id is {cid!r} but the URL names {expected_id!r}; make them equal or leave "
            "the id out",
        )


def check_id_value(value: Any, p: str, errs: FieldErrors) -> bool:
    """True when ``value`` is a valid id; otherwise record why at ``p`` and return False."""
    if text(value, p, errs) is None:
        return False
    if not ID_PATTERN.fullmatch(value):
        errs.add(
            p,
            f"{p} {value!r} is not a valid id: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
        return False
    return True
