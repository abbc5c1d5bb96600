"""The filter DSL (CONTRACTS §5): compile once, evaluate many times.

Shapes
------
Condition ``{"variable": "<dot.path>", "operator": op, "value": v}``, with exactly these three keys.
Group ``{"logicalOperator": "AND" | "OR", "conditions": [<condition or group>, ...]}``, nestable;
``conditions`` is a non-empty list. A filter holds at most ``MAX_DEPTH`` (32) levels of groups and
at most ``MAX_NODES`` (1000) conditions and groups in total.

Operators
---------
==========  ====================================  ==========================================
operator    value                                 matches when the document value ...
==========  ====================================  ==========================================
``==``      string, number, boolean or null       equals the value
``!=``      string, number, boolean or null       is present and differs from the value
``IN``      list of strings, or of numbers, or    equals one of the elements
            of booleans (``null`` may be added)
``> >= <``  number or string                      compares so (strings compare by code point)
``<=``
``LIKE``    string (a glob)                       matches the glob over the whole string:
                                                  ``*`` any run, ``?`` one character;
                                                  everything else is literal, case-sensitive
==========  ====================================  ==========================================

Paths
-----
``a.b.c`` walks nested objects. A segment of digits indexes a list when the current value is a
list (``nodes.nodeData.0.id``). Any other segment that meets a list is applied to every element
(lists within lists too), and so is an operator that meets a list at the end of the path: the
condition matches when ANY element matches. So ``nodes.nodeData.gpus.modelNames == "H100"`` holds
when some node has an H100, and ``tags != "gpu"`` holds when some tag is not ``"gpu"``.

Missing values
--------------
A missing key, an index past the end, or a path that runs into a scalar is a non-match for every
operator (``!=`` included), and so is a ``null`` document value, except that ``== null`` matches
a missing or ``null`` value, ``!= null`` matches a present non-null one, and ``IN`` with ``null``
among its elements matches a missing or ``null`` value. An empty list reached by the path
contributes no values (``tags == null`` is false for ``"tags": []``).

Types
-----
Numbers are ints and floats (``1 == 1.0``); booleans are not numbers. Comparing values of
different types — a number field with a string value, a boolean with a number, an object with
anything — is an error, never a silent non-match: :class:`~apportion.errors.InvalidRequest`
naming the condition's path, the variable, the document and both types. Type errors are found
when a document is evaluated; every value a condition reaches is checked, while ``AND``/``OR``
stop at the first deciding child. Shape errors are found when the filter is compiled.

Wrappers (:func:`parse_cluster_filter`): a bare condition or group (over the cluster document);
``{"matchType": "cluster", "filter": {"clusterQuery": f, "clusterMetricsQuery": f}}`` (either
part optional; metrics paths are relative to the metrics document, and a cluster without metrics
fails a metrics condition); and the parser envelope ``{"body": {"values": <either>}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from apportion.errors import InvalidRequest
from apportion.registry.filter_ops import MISSING, make_test, mismatch, resolve, show, type_name

Document = Mapping[str, Any]

MAX_DEPTH: Final = 32
MAX_NODES: Final = 1000
OPERATORS: Final = ("==", "!=", "IN", ">", ">=", "<", "<=", "LIKE")
LOGICAL_OPERATORS: Final = ("AND", "OR")
_CONDITION_KEYS: Final = frozenset({"variable", "operator", "value"})
_GROUP_KEYS: Final = frozenset({"logicalOperator", "conditions"})


class Predicate(Protocol):
    """A compiled filter: ``pred(doc, label='cluster "c1"') -> bool``.

    ``label`` names the document in type-mismatch errors. Raises :class:`InvalidRequest` when a
    condition compares values of different types.
    """

    def __call__(self, doc: Document, *, label: str = "") -> bool: ...


_Node = Callable[[Any, str], bool]


def _split_path(variable: Any, path: str) -> tuple[tuple[str, int | None], ...]:
    if not isinstance(variable, str) or not variable:
        raise InvalidRequest(
            f'{path}: "variable" must be a non-empty dot path such as "gpus.count", '
            f"not {show(variable)}",
            path=path,
        )
    parts = variable.split(".")
    if any(not part for part in parts):
        raise InvalidRequest(
            f'{path}: the variable "{variable}" has an empty segment; write segments joined by '
            'single dots, e.g. "nodes.nodeData.0.id"',
            path=path,
        )
    return tuple((part, int(part) if part.isascii() and part.isdigit() else None) for part in parts)


class _Builder:
    """Walks a spec once, checking shapes and limits, and returns nested closures."""

    def __init__(self) -> None:
        self.nodes = 0

    def build(self, spec: Any, path: str, depth: int) -> _Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InvalidRequest(
                f"{path}: the filter has more than {MAX_NODES} conditions and groups; "
                "simplify it (IN takes a list of values)",
                path=path,
            )
        if not isinstance(spec, Mapping):
            raise InvalidRequest(
                f"{path}: a filter must be an object, either a condition "
                '{"variable", "operator", "value"} or a group {"logicalOperator", "conditions"}, '
                f"not a {type_name(spec)}",
                path=path,
            )
        if "logicalOperator" in spec or "conditions" in spec:
            return self._group(spec, path, depth + 1)
        return self._condition(spec, path)

    def _group(self, spec: Mapping[str, Any], path: str, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"{path}: groups are nested more than {MAX_DEPTH} deep; flatten the filter",
                path=path,
            )
        _check_keys(spec, _GROUP_KEYS, path, "group")
        op = spec["logicalOperator"]
        if op not in LOGICAL_OPERATORS:
            raise InvalidRequest(
                f'{path}.logicalOperator: unknown logical operator {show(op)}; use "AND" or "OR"',
                path=f"{path}.logicalOperator",
            )
        conditions = spec["conditions"]
        if not isinstance(conditions, list) or not conditions:
            raise InvalidRequest(
                f'{path}.conditions: "conditions" must be a non-empty list of conditions or groups',
                path=f"{path}.conditions",
            )
        children = tuple(
            self.build(child, f"{path}.conditions[{i}]", depth)
            for i, child in enumerate(conditions)
        )
        if op == "AND":
            return lambda doc, label: all(child(doc, label) for child in children)
        return lambda doc, label: any(child(doc, label) for child in children)

    def _condition(self, spec: Mapping[str, Any], path: str) -> _Node:
        _check_keys(spec, _CONDITION_KEYS, path, "condition")
        segs = _split_path(spec["variable"], f"{path}.variable")
        op, value = spec["operator"], spec["value"]
        if op not in OPERATORS:
            raise InvalidRequest(
                f"{path}.operator: unknown operator {show(op)}; use one of {', '.join(OPERATORS)}",
                path=f"{path}.operator",
            )
        test = make_test(op, value, f"{path}.value")
        variable: str = spec["variable"]
        accepts_missing = (op == "==" and value is None) or (
            op == "IN" and any(v is None for v in value)
        )

        def node(doc: Any, label: str) -> bool:
            values: list[Any] = []
            resolve(doc, segs, 0, values)
            matched = False
            for found in values:
                if found is MISSING or found is None:
                    matched = matched or accepts_missing
                elif test(found):
                    matched = True
                elif test.kind is not None and type_name(found) != test.kind:
                    raise mismatch(path, variable, found, value, label)
            return matched

        return node


def _check_keys(spec: Mapping[str, Any], allowed: frozenset[str], path: str, what: str) -> None:
    for key in spec:
        if key not in allowed:
            raise InvalidRequest(
                f"{path}.{key}: unknown key {show(key)} in a {what}; "
                f"a {what} has exactly {', '.join(sorted(allowed))}",
                path=f"{path}.{key}",
            )
    for key in sorted(allowed):
        if key not in spec:
            raise InvalidRequest(
                f'{path}.{key}: the {what} is missing "{key}"', path=f"{path}.{key}"
            )


class CompiledFilter:
    """A compiled filter (a :class:`Predicate`); keeps its source ``spec`` for explain output."""

    __slots__ = ("_node", "path", "spec")

    def __init__(self, node: _Node, spec: Any, path: str) -> None:
        self._node = node
        self.spec = spec
        self.path = path

    def __call__(self, doc: Document, *, label: str = "") -> bool:
        return self._node(doc, label)

    def __repr__(self) -> str:
        return f"CompiledFilter({show(self.spec)})"


def compile_filter(spec: Any, *, path: str = "filter") -> Predicate:
    """Compile a bare condition or group into a fast predicate.

    Called once per request (or per stored query) by the registry and the engine; the result is
    then applied to every document. Raises :class:`InvalidRequest` whose ``details["path"]`` is
    the JSON path of the bad part, built on ``path`` (e.g. ``filter.conditions[2].operator``).
    """
    return CompiledFilter(_Builder().build(spec, path, 0), spec, path)


def filter_documents(
    predicate: Predicate, docs: Sequence[Document], *, label_key: str = "id"
) -> list[Document]:
    """The documents that match, in order; labels errors with ``<label_key> "<value>"``."""
    return [d for d in docs if predicate(d, label=f'{label_key} "{d.get(label_key, "?")}"')]


@dataclass(frozen=True)
class ClusterFilter:
    """A filter over clusters: a part over the cluster document and one over its metrics."""

    cluster: Predicate | None
    metrics: Predicate | None

    def matches(
        self, cluster_doc: Document, metrics_doc: Document | None, *, label: str = ""
    ) -> bool:
        """Both parts must match; a metrics condition on a cluster with no metrics is a non-match.

        Raises :class:`InvalidRequest` on a type mismatch, naming the document by ``label``.
        """
        if self.cluster is not None and not self.cluster(cluster_doc, label=label):
            return False
        if self.metrics is None:
            return True
        if metrics_doc is None:
            return False
        return self.metrics(metrics_doc, label=f"the metrics of {label}" if label else "")


def parse_cluster_filter(spec: Any, *, path: str = "filter") -> ClusterFilter | None:
    """Parse any of the three wrappers of CONTRACTS §5 into a :class:`ClusterFilter`.

    Called by the registry for ``filter``, ``POST /clusters/query`` and search ``filterRule``.
    Returns ``None`` for ``None``, ``{}`` or an envelope with no parts ("no filter"); raises
    :class:`InvalidRequest` naming the path for anything malformed.
    """
    return _parse_wrapper(spec, path, allow_body=True)


def _parse_wrapper(spec: Any, path: str, *, allow_body: bool) -> ClusterFilter | None:
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return None
    if not isinstance(spec, Mapping):
        raise InvalidRequest(
            f"{path}: a filter must be an object, not a {type_name(spec)}", path=path
        )
    if "body" in spec and allow_body:
        _check_keys(spec, frozenset({"body"}), path, "parser envelope")
        body = spec["body"]
        if not isinstance(body, Mapping):
            raise InvalidRequest(
                f'{path}.body: "body" must be an object {{"values": <filter>}}', path=f"{path}.body"
            )
        _check_keys(body, frozenset({"values"}), f"{path}.body", "parser envelope body")
        return _parse_wrapper(body["values"], f"{path}.body.values", allow_body=False)
    if "matchType" in spec or "filter" in spec:
        return _parse_envelope(spec, path)
    return ClusterFilter(cluster=compile_filter(spec, path=path), metrics=None)


def _parse_envelope(spec: Mapping[str, Any], path: str) -> ClusterFilter | None:
    for key in spec:
        if key not in ("matchType", "filter"):
            raise InvalidRequest(
                f"{path}.{key}: unknown key {show(key)}; the envelope has matchType and filter",
                path=f"{path}.{key}",
            )
    if spec.get("matchType", "cluster") != "cluster":
        raise InvalidRequest(
            f'{path}.matchType: only "cluster" can be matched here, not {show(spec["matchType"])}',
            path=f"{path}.matchType",
        )
    inner = spec.get("filter")
    if inner is None:
        inner = {}
    if not isinstance(inner, Mapping):
        raise InvalidRequest(
            f'{path}.filter: "filter" must be an object with clusterQuery and/or '
            "clusterMetricsQuery",
            path=f"{path}.filter",
        )
    parts: dict[str, Predicate | None] = {"clusterQuery": None, "clusterMetricsQuery": None}
    for key, part in inner.items():
        part_path = f"{path}.filter.{key}"
        if key not in parts:
            raise InvalidRequest(
                f"{part_path}: unknown query {show(key)}; use clusterQuery or clusterMetricsQuery",
                path=part_path,
            )
        if part is not None and not (isinstance(part, Mapping) and not part):
            parts[key] = compile_filter(part, path=part_path)
    if parts["clusterQuery"] is None and parts["clusterMetricsQuery"] is None:
        return None
    return ClusterFilter(cluster=parts["clusterQuery"], metrics=parts["clusterMetricsQuery"])
