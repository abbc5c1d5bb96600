"""Turning pydantic validation errors into :class:`~apportion.errors.InvalidRequest`.

One place decides how a field path is spelled for users: ``body.nodes[1].id``
(dots between keys, brackets around list indices), prefixed with where the
document came from (``body``, ``inputs``, the message itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from apportion.errors import InvalidRequest


def join_path(prefix: str, loc: Sequence[str | int]) -> str:
    """``join_path("body", ("nodes", 1, "id")) == "body.nodes[1].id"``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _describe(error: Any) -> str:
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid value"))
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field; remove it or check its spelling"
    return msg[0].lower() + msg[1:] if msg else "is invalid"


def invalid_from_pydantic(
    exc: ValidationError, *, prefix: str = "", allowed: Sequence[str] = ()
) -> InvalidRequest:
    """The first error becomes the message and ``path``; all of them go in ``details.errors``."""
    errors = [
        {"path": join_path(prefix, error["loc"]), "message": _describe(error)}
        for error in exc.errors(include_url=False)
    ]
    first = errors[0]
    message = f"{first['path'] or 'message'} {first['message']}"
    if allowed and exc.errors()[0].get("type") == "extra_forbidden":
        message += f" (known fields: {', '.join(allowed)})"
    return InvalidRequest(message, path=first["path"], details={"errors": errors})
