"""The built-in placement policies ``binpack``, ``spread`` and ``topology`` (CONTRACTS §3).

Each is a :class:`BuiltinPlacement`, implementing the internal
:class:`~apportion.policies.protocol.PlacementPolicy` over the vectorised kernel
(:func:`apportion.engine.placement.place`); the allocation service calls ``place`` with the
server's fleet view. Stateless: one object per policy, shared by every call.

:class:`BinpackPolicy`, :class:`SpreadPolicy` and :class:`TopologyPolicy` are their seed-contract
face (``cls(rule_id, settings, parameters)``, ``eval``, ``management``): the server calls only
their ``management``; ``eval`` is the offline entry point (tests, notebooks), which builds a
fleet view from ``input_data["cluster_data"]`` and reads nothing from ``settings``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, ClassVar

from apportion.engine.decisions import JsonValue, Outcome, Unplaceable, placements_json
from apportion.engine.placement import place
from apportion.engine.requests import REQUEST_KEYS, GpuRequest, parse_inputs
from apportion.engine.stage import Strategy
from apportion.errors import InvalidRequest
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey


@dataclass(frozen=True)
class BuiltinPlacement:
    """One built-in placement policy: a strategy of the kernel."""

    strategy: Strategy
    description: str
    version: str = "1.0"
    release_tag: str = "stable"

    @property
    def name(self) -> str:
        return self.strategy.value

    @property
    def uri(self) -> str:
        return f"{self.name}:{self.version}-{self.release_tag}"

    def place(
        self,
        fleet: FleetView,
        candidates: Sequence[str],
        requests: Sequence[GpuRequest],
        unavailable: Set[GpuKey] = frozenset(),
    ) -> Outcome:
        """:func:`apportion.engine.placement.place` with this policy's strategy."""
        return place(fleet, candidates, requests, self.strategy, unavailable=unavailable)

    def describe(self) -> dict[str, JsonValue]:
        """What ``management("describe")`` answers."""
        return {
            "status": "success",
            "name": self.name,
            "version": self.version,
            "release_tag": self.release_tag,
            "description": self.description,
            "inputs": {
                "request_fields": list(REQUEST_KEYS),
                "gang": '{"requests": [request, ...]} placed all or nothing',
            },
        }


BINPACK = BuiltinPlacement(
    Strategy.BINPACK, "the feasible node with the fewest available GPUs left after placement"
)
SPREAD = BuiltinPlacement(
    Strategy.SPREAD, "the feasible node with the most available GPUs left after placement"
)
TOPOLOGY = BuiltinPlacement(
    Strategy.TOPOLOGY,
    "the request's GPUs inside one NVLink domain, choosing the domain with the fewest "
    "available GPUs left after placement",
)


class _SeedContract:
    """The seed-contract face of a built-in; subclasses set ``placement``."""

    placement: ClassVar[BuiltinPlacement]

    def __init__(self, rule_id: str, settings: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters

    def eval(
        self, parameters: dict[str, Any], input_data: dict[str, Any], context: dict[str, Any]
    ) -> dict[str, JsonValue] | list[dict[str, JsonValue]]:
        """Place ``input_data["inputs"]`` on a fleet view built from
        ``input_data["cluster_data"]`` (every cluster in it is a candidate). Returns one
        placement dict, or a list for ``{"requests": [...]}``. Raises :class:`InvalidRequest`
        for bad inputs and :class:`~apportion.errors.NoFeasiblePlacement` with per-node reasons
        when nothing fits (the seed's way of saying no)."""
        if not isinstance(input_data, Mapping):
            raise InvalidRequest("input_data must be an object", path="input_data")
        cluster_data = input_data.get("cluster_data") or {}
        if not isinstance(cluster_data, Mapping):
            raise InvalidRequest("cluster_data must be an object", path="input_data.cluster_data")
        requests, is_gang = parse_inputs(input_data.get("inputs"))
        fleet = FleetView.from_cluster_data(cluster_data)
        outcome = self.placement.place(fleet, list(cluster_data), requests)
        if isinstance(outcome, Unplaceable):
            raise outcome.error()
        placements = placements_json(outcome.placements)
        return placements if is_gang else placements[0]

    def management(self, action: str, data: dict[str, Any]) -> dict[str, JsonValue]:
        """``describe`` → the strategy and the accepted request fields; other actions are
        refused in the seed's convention ``{"status": "error", "message": ...}``."""
        if action == "describe":
            return self.placement.describe()
        return {"status": "error", "message": f"Unknown action '{action}'"}


class BinpackPolicy(_SeedContract):
    placement = BINPACK


class SpreadPolicy(_SeedContract):
    placement = SPREAD


class TopologyPolicy(_SeedContract):
    placement = TOPOLOGY


BUILTIN_POLICIES: Mapping[str, type[_SeedContract]] = {
    cls.placement.uri: cls for cls in (BinpackPolicy, SpreadPolicy, TopologyPolicy)
}
"""URI → the seed-contract class of each built-in placement policy."""
