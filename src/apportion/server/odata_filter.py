"""The part of OData's ``$filter`` that seed 000's clients send as ``filter_exp``: comparisons
of a named field with a literal — ``eq ne gt ge lt le`` — joined by ``and`` and ``or``, with
parentheses (``and`` binds tighter). Literals: ``'text'`` (``''`` is a quote inside it),
numbers, ``true``, ``false``, ``null``. Anything else OData has (``not``, functions such as
``contains(…)``, arithmetic, ``in``, lambdas) is refused naming what was found, as is a field
the listing does not have.

>>> matches = compile_filter("status eq 'running' and replica_count ge 2", {"status", "replica_count"})
>>> matches({"status": "running", "replica_count": 4})
True

Comparisons follow OData: a field that is null equals only ``null`` and is neither greater nor
less than anything; values of different kinds (text and a number) are not equal and not
ordered. Times are compared as their ISO-8601 text, which orders them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from apportion.errors import InvalidRequest

Predicate = Callable[[Mapping[str, Any]], bool]

MAX_LENGTH = 4096
MAX_COMPARISONS = 100
MAX_DEPTH = 32

COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
SUPPORTED = "comparisons (eq ne gt ge lt le) of a field with a literal, and, or, parentheses"

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_./]*)|(?P<open>\()|(?P<close>\))|(?P<other>\S))"
)


@dataclass(frozen=True)
class _Token:
    kind: str  # string, number, name, open, close, other, end
    text: str
    at: int  # where it starts in the expression


def _tokens(text: str) -> list[_Token]:
    found: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:  # only spaces were left
            break
        kind = match.lastgroup
        found.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    found.append(_Token("end", "", len(text)))
    return found


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(f"filter_exp: {message}", path="query.filter_exp")


class _Parser:
    def __init__(self, text: str, fields: Collection[str]) -> None:
        self._tokens = _tokens(text)
        self._next = 0
        self._fields = fields
        self._comparisons = 0

    def parse(self) -> Predicate:
        predicate = self._or(0)
        token = self._peek()
        if token.kind != "end":
            raise _refuse(
                f"{token.text!r} at character {token.at + 1} is not understood; {SUPPORTED}"
            )
        return predicate

    def _peek(self) -> _Token:
        return self._tokens[self._next]

    def _take(self) -> _Token:
        token = self._tokens[self._next]
        self._next += 1
        return token

    def _or(self, depth: int) -> Predicate:
        parts = [self._and(depth)]
        while self._peek().kind == "name" and self._peek().text == "or":
            self._take()
            parts.append(self._and(depth))
        return parts[0] if len(parts) == 1 else (lambda item: any(p(item) for p in parts))

    def _and(self, depth: int) -> Predicate:
        parts = [self._primary(depth)]
        while self._peek().kind == "name" and self._peek().text == "and":
            self._take()
            parts.append(self._primary(depth))
        return parts[0] if len(parts) == 1 else (lambda item: all(p(item) for p in parts))

    def _primary(self, depth: int) -> Predicate:
        token = self._take()
        if token.kind == "open":
            if depth >= MAX_DEPTH:
                raise _refuse(f"more than {MAX_DEPTH} nested parentheses")
            inner = self._or(depth + 1)
            closing = self._take()
            if closing.kind != "close":
                raise _refuse(f"a ')' is missing at character {closing.at + 1}")
            return inner
        if token.kind != "name" or token.text in ("and", "or"):
            where = (
                "the end" if token.kind == "end" else f"{token.text!r} at character {token.at + 1}"
            )
            raise _refuse(f"a field name was expected, not {where}; {SUPPORTED}")
        if self._peek().kind == "open" or token.text == "not":
            raise _refuse(f"{token.text!r} is not supported; {SUPPORTED}")
        if token.text not in self._fields:
            raise _refuse(
                f"no field {token.text!r}; the fields are {', '.join(sorted(self._fields))}"
            )
        comparison = self._take()
        compare = COMPARISONS.get(comparison.text) if comparison.kind == "name" else None
        if compare is None:
            where = "the end" if comparison.kind == "end" else repr(comparison.text)
            raise _refuse(
                f"{where} after {token.text!r} is no comparison; use eq, ne, gt, ge, lt or le"
            )
        literal = self._literal()
        self._comparisons += 1
        if self._comparisons > MAX_COMPARISONS:
            raise _refuse(f"more than {MAX_COMPARISONS} comparisons")
        return _comparison(token.text, comparison.text, compare, literal)

    def _literal(self) -> Any:
        token = self._take()
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "name" and token.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token.text]
        where = "the end" if token.kind == "end" else f"{token.text!r} at character {token.at + 1}"
        raise _refuse(
            f"a literal ('text', a number, true, false or null) was expected, not {where}"
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "text" if isinstance(value, str) else "other"


def _comparison(
    field: str, name: str, compare: Callable[[Any, Any], bool], literal: Any
) -> Predicate:
    def matches(item: Mapping[str, Any]) -> bool:
        value = item.get(field)
        if _kind(value) != _kind(literal) or _kind(value) == "other":
            return name == "ne"
        if value is None:  # null equals null and is not ordered
            return name == "eq"
        return bool(compare(value, literal))

    return matches


def compile_filter(text: str, fields: Collection[str]) -> Predicate:
    """A predicate over listing items (mappings of ``fields``) for the filter ``text``;
    :class:`InvalidRequest` naming ``query.filter_exp`` and what is wrong, for anything beyond
    :data:`SUPPORTED` or a field not in ``fields``."""
    if len(text) > MAX_LENGTH:
        raise _refuse(f"longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise _refuse("empty; leave it out to list everything")
    return _Parser(text, fields).parse()
