"""Field checks for JSON documents: each returns the value, or records the problem and returns None.

Who uses it: the registry's document validators (:mod:`apportion.registry.documents.cluster` for cluster
documents, :mod:`apportion.registry.metrics` for metrics documents) check each field with
:func:`obj`, :func:`text`, :func:`str_list`, :func:`count` or :func:`amount`, collect every
problem in one :class:`FieldErrors`, and call :meth:`FieldErrors.raise_if_any` at the end, which
raises one :class:`InvalidRequest` naming the first bad field and listing all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from apportion.errors import InvalidRequest


class FieldErrors:
    """Problems found in one document, raised together as one :class:`InvalidRequest`."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, path: str, message: str) -> None:
        self.items.append({"path": path, "message": message})

    def raise_if_any(self) -> None:
        """Raise the first problem (message and ``path``), all of them in ``details.errors``."""
        if not self.items:
            return
        first = self.items[0]
        message = first["message"]
        if len(self.items) > 1:
            message += f" (and {len(self.items) - 1} more problem(s), see details.errors)"
        raise InvalidRequest(message, path=first["path"], details={"errors": list(self.items)})


def kind_of(value: Any) -> str:
    """How a JSON value's type reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def obj(value: Any, p: str, errs: FieldErrors) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    errs.add(p, f"{p} must be an object, got {kind_of(value)}")
    return None


def text(value: Any, p: str, errs: FieldErrors) -> str | None:
    if isinstance(value, str):
        return value
    errs.add(p, f"{p} must be a string, got {kind_of(value)}")
    return None


def str_list(value: Any, p: str, errs: FieldErrors) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    errs.add(p, f"{p} must be a list of strings")
    return None


def count(value: Any, p: str, errs: FieldErrors) -> int | None:
    """A whole number ≥ 0 (booleans are refused)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    errs.add(p, f"{p} must be a whole number ≥ 0, got {_shown(value)}")
    return None


def amount(value: Any, p: str, errs: FieldErrors, *, most: float | None = None) -> float | None:
    """A finite number ≥ 0 (and ≤ ``most`` when given); ints stay ints."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            errs.add(p, f"{p} must be a finite number, got {value}")
            return None
        if value < 0 or (most is not None and value > most):
            bound = "≥ 0" if most is None else f"between 0 and {fmt(most)}"
            errs.add(p, f"{p} must be {bound}, got {fmt(value)}")
            return None
        return value
    errs.add(p, f"{p} must be a number, got {kind_of(value)}")
    return None


def _shown(value: Any) -> str:
    return (
        fmt(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else kind_of(value)
    )


def same(a: float, b: float) -> bool:
    """Equal up to float rounding (sums of MB values)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def fmt(x: float) -> str:
    """``16`` for 16.0, ``1.5`` for 1.5."""
    return str(int(x)) if isinstance(x, int) or (math.isfinite(x) and x == int(x)) else repr(x)
