"""What the filter DSL's operators, values and paths mean: the tests a compiled filter runs.

Who uses it: the compiler in :mod:`apportion.registry.filters` binds each condition's operator to
its value with :func:`make_test` (which refuses a value of the wrong shape), and the compiled
condition calls :func:`resolve` to reach the document values of its path and :func:`mismatch` to
build the type error. :func:`type_name` and :func:`show` name DSL types and values in messages.
The semantics are documented in :mod:`apportion.registry.filters`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from apportion.errors import InvalidRequest
from apportion.jsonutil import dumps_str

_ORDERING: Final[dict[str, Callable[[Any, Any], bool]]] = {
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
}
MISSING: Final = object()


def type_name(value: Any) -> str:
    """The DSL type name of a value: null, boolean, number, string, object, list or other."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def show(value: Any) -> str:
    """A value as JSON for messages (its repr when it is not JSON)."""
    try:
        return dumps_str(value)
    except TypeError:
        return repr(value)


def resolve(cur: Any, segs: tuple[tuple[str, int | None], ...], i: int, out: list[Any]) -> None:
    """Append every value the path reaches from ``segs[i]`` on (``MISSING`` for dead ends)."""
    n = len(segs)
    while i < n:
        key, index = segs[i]
        if isinstance(cur, Mapping):
            cur = cur.get(key, MISSING)
            if cur is MISSING:
                out.append(MISSING)
                return
        elif isinstance(cur, list | tuple):
            if index is not None:
                if index >= len(cur):
                    out.append(MISSING)
                    return
                cur = cur[index]
            else:
                for element in cur:
                    resolve(element, segs, i, out)
                return
        else:
            out.append(MISSING)
            return
        i += 1
    _flatten(cur, out)


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list | tuple):
        for element in value:
            _flatten(element, out)
    else:
        out.append(value)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob (``*``, ``?``; all else literal) to a case-sensitive, anchored regex."""
    out: list[str] = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class _Test:
    """One operator bound to its value: ``test(found) -> bool`` for a non-null found value."""

    __slots__ = ("fn", "kind")

    def __init__(self, fn: Callable[[Any], bool], kind: str | None) -> None:
        self.fn = fn
        self.kind = kind  # the type found values must have; None means "no type rule"

    def __call__(self, found: Any) -> bool:
        return self.fn(found)


def make_test(op: str, value: Any, path: str) -> _Test:
    """Bind ``op`` to ``value``; raises InvalidRequest at ``path`` when the value does not fit."""
    kind = type_name(value)
    if op in ("==", "!="):
        if kind not in ("null", "boolean", "number", "string"):
            raise InvalidRequest(
                f"{path}: {op} takes a string, number, boolean or null, not a {kind}; "
                "use IN to match one of several values",
                path=path,
            )
        if kind == "null":
            return _Test((lambda f: False) if op == "==" else (lambda f: True), None)
        if op == "==":
            return _Test(lambda f: type_name(f) == kind and f == value, kind)
        return _Test(lambda f: type_name(f) == kind and f != value, kind)
    if op == "IN":
        return _in_test(value, path)
    if op == "LIKE":
        if kind != "string":
            raise InvalidRequest(
                f'{path}: LIKE takes a glob string such as "H1*", not a {kind}', path=path
            )
        match = _glob_regex(value).fullmatch
        return _Test(lambda f: isinstance(f, str) and match(f) is not None, "string")
    if kind not in ("number", "string"):
        raise InvalidRequest(f"{path}: {op} takes a number or a string, not a {kind}", path=path)
    compare = _ORDERING[op]
    return _Test(lambda f: type_name(f) == kind and compare(f, value), kind)


def _in_test(value: Any, path: str) -> _Test:
    if not isinstance(value, list):
        raise InvalidRequest(
            f'{path}: IN takes a list of values such as ["A100", "H100"], not a {type_name(value)}',
            path=path,
        )
    kinds = {type_name(v) for v in value} - {"null"}
    if len(kinds) > 1 or not kinds <= {"boolean", "number", "string"}:
        raise InvalidRequest(
            f"{path}: the IN list must hold values of one type (strings, numbers or booleans, "
            f"plus null), but it holds {', '.join(sorted(kinds))}",
            path=path,
        )
    kind = kinds.pop() if kinds else None
    members = frozenset(v for v in value if v is not None)
    return _Test(lambda f: type_name(f) == kind and f in members, kind)


def mismatch(path: str, variable: str, found: Any, value: Any, label: str) -> InvalidRequest:
    """The type-mismatch error of a condition (``label`` names the document)."""
    where = label or "the document"
    found_kind = type_name(found)
    if isinstance(value, list):
        kinds = sorted({type_name(v) for v in value} - {"null"})
        shown = f"the values {show(value)} are {kinds[0]}s"
    else:
        shown = f"the value {show(value)} is a {type_name(value)}"
    article = "an" if found_kind[0] in "aeiou" else "a"
    return InvalidRequest(
        f'{path}: variable "{variable}" is {article} {found_kind} in {where} but {shown}',
        path=path,
        details={"variable": variable, "document": where, "found_type": found_kind},
    )
