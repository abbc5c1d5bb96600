"""The built-in placement policies ``binpack``, ``spread`` and ``topology`` (CONTRACTS §3).

Seed-format classes (``cls(rule_id, settings, parameters)``, ``eval``, ``management``) over
the vectorised kernels of :mod:`apportion.engine.placement`. The engine builds them once per
policy URI and calls ``eval`` per request with ``settings["fleet"]`` (its
:class:`~apportion.registry.fleet.FleetView`), ``settings["unavailable"]`` (extra GPU keys to
avoid) and optionally ``settings["outcome_sink"]`` (called with the
:class:`~apportion.engine.placement.PlacementOutcome`, for explain records). Without a fleet
(offline testing) the view is built from ``input_data["cluster_data"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from apportion.engine.placement import PlacementOutcome, place
from apportion.engine.requests import REQUEST_KEYS, GpuRequest, parse_inputs
from apportion.engine.stage import Strategy
from apportion.errors import InvalidRequest, NoFeasiblePlacement
from apportion.registry.fleet import FleetView

_PHRASES = {
    "insufficient_gpus": "{n} have too few available GPUs",
    "gpu_model": "{n} lack the model",
    "gpu_memory": "{n} have GPUs with too little memory",
    "vcpus": "{n} have too few vCPUs",
    "memory": "{n} have too little memory",
    "nvlink": "{n} have no NVLink domain that fits",
    "node_filter": "{n} do not match node_filter",
}


def infeasible_error(outcome: PlacementOutcome, requests: list[GpuRequest]) -> NoFeasiblePlacement:
    """The :class:`NoFeasiblePlacement` for a failed outcome, with per-node reasons."""
    index = outcome.failed_request or 0
    request = requests[index]
    summary = outcome.rejection_summary()
    which = f"request {index} of the gang" if len(requests) > 1 else "the request"
    if outcome.candidate_nodes == 0:
        reason = "there are no candidate nodes"
    else:
        parts = []
        for kind, count in sorted(summary.items(), key=lambda kv: (-kv[1], kv[0])):
            noun = f"{count} node{'s' if count != 1 else ''}"
            parts.append(_PHRASES[kind].format(n=noun))
        reason = ", ".join(parts) or "no candidate node fits"
    message = f"no node can take {request.describe()} ({which}): {reason}"
    rejections = [r.as_dict() for r in outcome.rejections(50)]
    return NoFeasiblePlacement(
        message,
        details={
            "rejections": rejections,
            "summary": summary,
            "failed_request": index,
            "candidate_nodes": outcome.candidate_nodes,
        },
    )


class _PlacementPolicy:
    """Shared body of the built-ins; subclasses set ``strategy`` and ``description``."""

    strategy: ClassVar[Strategy]
    description: ClassVar[str]
    version: ClassVar[str] = "1.0"
    release_tag: ClassVar[str] = "stable"

    def __init__(self, rule_id: str, settings: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters

    def eval(
        self, parameters: dict[str, Any], input_data: dict[str, Any], context: dict[str, Any]
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Place ``input_data["inputs"]`` on the candidates (the keys of
        ``input_data["cluster_data"]``; values are never read when a fleet is injected).
        Returns one placement dict, or a list for ``{"requests": [...]}``. Raises
        :class:`InvalidRequest` for bad inputs and :class:`NoFeasiblePlacement` with per-node
        reasons when nothing fits."""
        settings = self.settings
        if not isinstance(input_data, Mapping):
            raise InvalidRequest("input_data must be an object", path="input_data")
        cluster_data = input_data.get("cluster_data") or {}
        if not isinstance(cluster_data, Mapping):
            raise InvalidRequest("cluster_data must be an object", path="input_data.cluster_data")
        requests, is_gang = parse_inputs(input_data.get("inputs"))
        fleet = settings.get("fleet")
        if not isinstance(fleet, FleetView):
            fleet = FleetView.from_cluster_data(cluster_data)
        candidates = list(cluster_data)  # the keys; iterating a Mapping beats its KeysView
        unavailable = frozenset(settings.get("unavailable") or ())
        outcome = place(fleet, candidates, requests, self.strategy, unavailable=unavailable)
        sink = settings.get("outcome_sink")
        if callable(sink):
            sink(outcome)
        if outcome.placements is None:
            raise infeasible_error(outcome, requests)
        return outcome.placements if is_gang else outcome.placements[0]

    def management(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """``describe`` → the strategy and the accepted request fields; other actions are
        refused in the seed's convention ``{"status": "error", "message": ...}``."""
        if action == "describe":
            return {
                "status": "success",
                "name": self.strategy.value,
                "version": self.version,
                "release_tag": self.release_tag,
                "description": self.description,
                "inputs": {
                    "request_fields": list(REQUEST_KEYS),
                    "gang": '{"requests": [request, ...]} placed all or nothing',
                },
            }
        return {"status": "error", "message": f"Unknown action '{action}'"}


class BinpackPolicy(_PlacementPolicy):
    strategy = Strategy.BINPACK
    description = "the feasible node with the fewest available GPUs left after placement"


class SpreadPolicy(_PlacementPolicy):
    strategy = Strategy.SPREAD
    description = "the feasible node with the most available GPUs left after placement"


class TopologyPolicy(_PlacementPolicy):
    strategy = Strategy.TOPOLOGY
    description = (
        "the request's GPUs inside one NVLink domain, choosing the domain with the fewest "
        "available GPUs left after placement"
    )


BUILTIN_POLICIES: Mapping[str, type] = {
    "binpack:1.0-stable": BinpackPolicy,
    "spread:1.0-stable": SpreadPolicy,
    "topology:1.0-stable": TopologyPolicy,
}
