"""Validation of a policy's output against the candidates and the registry (CONTRACTS §3).

Called by the engine after every evaluation, built-in or custom, before an answer is sent or
a hold is taken. Pure: reads the fleet view only. Any problem is
:class:`~apportion.errors.InvalidPolicyOutput` naming the policy, the placement index and what
is wrong — a broken policy is an error, never a rejection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from apportion.errors import InvalidPolicyOutput
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey

_REPR_LIMIT = 500


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


def validate_output(
    output: Any,
    *,
    expected: int | None,
    is_gang: bool,
    candidates: Set[str],
    fleet: FleetView,
    require_free: bool,
    policy_uri: str,
) -> list[dict[str, Any]]:
    """Check a policy's output and return its placements as a list (one element for a single
    request).

    A single request answers with a dict ``{"cluster_id", "node_id"?, "gpus"?}``; a gang with a
    list of them of length ``expected`` (when given). The cluster must be a candidate, the node
    must belong to it, each GPU id (str index; ints are normalised to str) must exist on the
    node and appear once in the whole output, and when ``require_free`` none may be held in the
    fleet. ``gpus`` without ``node_id`` is refused. Other keys pass through unchanged.
    Raises :class:`InvalidPolicyOutput` with ``details = {"policy_rule_uri", "index",
    "problem", "output"}`` (``index`` is None for a problem with the output as a whole)."""

    def fail(index: int | None, problem: str) -> InvalidPolicyOutput:
        where = "its output" if index is None else f"placement {index}"
        return InvalidPolicyOutput(
            f"policy {policy_uri} returned an invalid placement: {where}: {problem}",
            details={
                "policy_rule_uri": policy_uri,
                "index": index,
                "problem": problem,
                "output": _truncated(output),
            },
        )

    with fleet.lock:  # one consistent view of the holds for the whole output
        return _validate(output, expected, is_gang, candidates, fleet, require_free, fail)


def _validate(
    output: Any,
    expected: int | None,
    is_gang: bool,
    candidates: Set[str],
    fleet: FleetView,
    require_free: bool,
    fail: Any,
) -> list[dict[str, Any]]:
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

    seen: set[GpuKey] = set()
    result: list[dict[str, Any]] = []
    s = fleet.structure
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise fail(i, f"expected an object, got {type(item).__name__}")
        placement = dict(item)
        cid = placement.get("cluster_id")
        if not isinstance(cid, str):
            raise fail(i, "cluster_id is missing or not a string")
        if cid not in candidates:
            raise fail(i, f'cluster "{cid}" was not a candidate')
        node_id = placement.get("node_id")
        gpus = placement.get("gpus")
        if node_id is None:
            if gpus not in (None, []):
                raise fail(i, "gpus given without node_id")
            result.append(placement)
            continue
        if not isinstance(node_id, str):
            raise fail(i, "node_id is not a string")
        row = s.node_row(cid, node_id)
        if row is None:
            raise fail(i, f'node "{node_id}" does not belong to cluster "{cid}"')
        if gpus is not None:
            placement["gpus"] = _check_gpus(gpus, i, cid, node_id, fleet, seen, require_free, fail)
        result.append(placement)
    return result


def _check_gpus(
    gpus: Any,
    i: int,
    cid: str,
    node_id: str,
    fleet: FleetView,
    seen: set[GpuKey],
    require_free: bool,
    fail: Any,
) -> list[str]:
    if not isinstance(gpus, list):
        raise fail(i, f"gpus must be a list of GPU ids, got {type(gpus).__name__}")
    ids: list[str] = []
    for raw in gpus:
        gid = _gpu_id(raw)
        if gid is None:
            raise fail(i, f"GPU id {raw!r} is not a GPU index")
        key = (cid, node_id, gid)
        if fleet.gpu_row(key) is None:
            raise fail(i, f'GPU "{gid}" does not exist on node "{node_id}" of cluster "{cid}"')
        if key in seen:
            raise fail(i, f'GPU "{gid}" of node "{node_id}" appears twice in the output')
        if require_free and fleet.is_held(key):
            raise fail(i, f'GPU "{gid}" of node "{node_id}" is already held')
        seen.add(key)
        ids.append(gid)
    return ids


def placement_gpu_keys(placements: Sequence[Mapping[str, Any]]) -> list[GpuKey]:
    """The GPUs of validated placements as fleet keys, in order (placements without a node
    or GPUs contribute none). Used to hold them."""
    keys: list[GpuKey] = []
    for p in placements:
        node_id = p.get("node_id")
        for g in p.get("gpus") or []:
            gid = _gpu_id(g)
            if node_id is not None and gid is not None:
                keys.append((str(p["cluster_id"]), str(node_id), gid))
    return keys
