"""Validation of a policy's output against the candidates and the registry (CONTRACTS §3).

Called by the allocation service after every evaluation, built-in (:func:`validate_placements`)
or seed-contract (:func:`validate_output`, which also makes the output typed), before an answer
is sent or a hold is taken. Pure: reads the fleet view only. Any problem is
:class:`~apportion.errors.InvalidPolicyOutput` naming the policy, the placement index and what
is wrong — a broken policy is an error, never a rejection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any, cast

from apportion.engine.decisions import JsonValue, Placement
from apportion.errors import InvalidPolicyOutput
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey

_REPR_LIMIT = 500
_KEYS = frozenset(("cluster_id", "node_id", "gpus"))

Fail = Callable[[int | None, str], InvalidPolicyOutput]


def _truncated(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "…"


def _gpu_id(value: Any) -> str | None:
    """A GPU id as the contract's str index; ints are normalised; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    if isinstance(value, str) and value.isdecimal() and value.isascii():
        return str(int(value))
    return None


def _failure(policy_uri: str, output: Callable[[], Any]) -> Fail:
    """The error maker for one output (``output`` is called only when something fails)."""

    def fail(index: int | None, problem: str) -> InvalidPolicyOutput:
        where = "its output" if index is None else f"placement {index}"
        return InvalidPolicyOutput(
            f"policy {policy_uri} returned an invalid placement: {where}: {problem}",
            details={
                "policy_rule_uri": policy_uri,
                "index": index,
                "problem": problem,
                "output": _truncated(output()),
            },
        )

    return fail


def validate_output(
    output: Any,
    *,
    expected: int | None,
    is_gang: bool,
    candidates: Set[str],
    fleet: FleetView,
    require_free: bool,
    policy_uri: str,
) -> tuple[Placement, ...]:
    """Check a seed-contract policy's output and return its placements (one element for a
    single request): the one place that output becomes typed.

    A single request answers with a dict ``{"cluster_id", "node_id"?, "gpus"?}``; a gang with a
    list of them of length ``expected`` (when given). Each placement is then checked as
    :func:`validate_placements` does. ``gpus`` without ``node_id`` is refused; GPU ids are str
    indices (ints are normalised to str). Other keys pass through unchanged (``extra``).
    Raises :class:`InvalidPolicyOutput` with ``details = {"policy_rule_uri", "index",
    "problem", "output"}`` (``index`` is None for a problem with the output as a whole)."""
    fail = _failure(policy_uri, lambda: output)
    if is_gang:
        if not isinstance(output, list):
            raise fail(None, f"expected a list of placements, got {type(output).__name__}")
        if expected is not None and len(output) != expected:
            raise fail(None, f"expected {expected} placements (one per request), got {len(output)}")
        items: Sequence[Any] = output
    else:
        if not isinstance(output, Mapping):
            raise fail(None, f"expected a placement object, got {type(output).__name__}")
        items = [output]
    placements = tuple(_parse(i, item, fail) for i, item in enumerate(items))
    with fleet.lock:  # one consistent view of the holds for the whole output
        _check(placements, candidates, fleet, require_free, fail)
    return placements


def validate_placements(
    placements: Sequence[Placement],
    *,
    candidates: Set[str],
    fleet: FleetView,
    require_free: bool,
    policy_uri: str,
) -> None:
    """Check placements against the candidates and the registry (CONTRACTS §3), for every
    policy before an answer is sent or a hold is taken: the cluster was a candidate, the node
    belongs to it, each GPU exists on the node and appears once, and when ``require_free`` none
    is held in the fleet. Raises :class:`InvalidPolicyOutput` as :func:`validate_output`."""
    fail = _failure(policy_uri, lambda: [p.to_json() for p in placements])
    with fleet.lock:
        _check(placements, candidates, fleet, require_free, fail)


def _parse(i: int, item: Any, fail: Fail) -> Placement:
    if not isinstance(item, Mapping):
        raise fail(i, f"expected an object, got {type(item).__name__}")
    cid = item.get("cluster_id")
    if not isinstance(cid, str):
        raise fail(i, "cluster_id is missing or not a string")
    node_id, gpus = item.get("node_id"), item.get("gpus")
    extra = cast(dict[str, JsonValue], {k: v for k, v in item.items() if k not in _KEYS})
    if node_id is None:
        if gpus not in (None, []):
            raise fail(i, "gpus given without node_id")
        return Placement(cid, None, None if gpus is None else (), extra)
    if not isinstance(node_id, str):
        raise fail(i, "node_id is not a string")
    if gpus is None:
        return Placement(cid, node_id, None, extra)
    if not isinstance(gpus, list):
        raise fail(i, f"gpus must be a list of GPU ids, got {type(gpus).__name__}")
    ids: list[str] = []
    for raw in gpus:
        gid = _gpu_id(raw)
        if gid is None:
            raise fail(i, f"GPU id {raw!r} is not a GPU index")
        ids.append(gid)
    return Placement(cid, node_id, tuple(ids), extra)


def _check(
    placements: Sequence[Placement],
    candidates: Set[str],
    fleet: FleetView,
    require_free: bool,
    fail: Fail,
) -> None:
    seen: set[GpuKey] = set()
    s = fleet.structure
    for i, p in enumerate(placements):
        cid, node_id = p.cluster_id, p.node_id
        if cid not in candidates:
            raise fail(i, f'cluster "{cid}" was not a candidate')
        if node_id is None:
            continue
        if s.node_row(cid, node_id) is None:
            raise fail(i, f'node "{node_id}" does not belong to cluster "{cid}"')
        for key in p.gpu_keys:
            gid = key[2]
            if fleet.gpu_row(key) is None:
                raise fail(i, f'GPU "{gid}" does not exist on node "{node_id}" of cluster "{cid}"')
            if key in seen:
                raise fail(i, f'GPU "{gid}" of node "{node_id}" appears twice in the output')
            if require_free and fleet.is_held(key):
                raise fail(i, f'GPU "{gid}" of node "{node_id}" is already held')
            seen.add(key)
