"""``similarity:1.0-stable``: rank search survivors by their closeness to a target.

A seed-format ranking policy (CONTRACTS §3, §5). For ``search``, the engine filters the registry
and calls ``eval(parameters, input_data, context)`` with ``input_data`` = the surviving cluster
documents, each carrying its metrics document (or ``None``) under ``"cluster_metrics"``.

Features (a missing or non-numeric value counts as 0):

===================  ====================================================================
feature              value
===================  ====================================================================
``gpus``             cluster ``gpus.count``
``gpu_memory``       cluster ``gpus.memory`` (MB, all GPUs)
``vcpus``            cluster ``vcpus.count``
``memory``           cluster ``memory`` (MB)
``free_gpu_memory``  metrics ``cluster.gpu.totalFreeMem`` (MB)
``gpu_utilization``  metrics: mean of ``nodes[].gpu.avgCudaUtilization`` over the nodes that
                     report it
``reputation``       cluster ``reputation``
===================  ====================================================================

Parameters: ``target`` — ``{feature: desired value}``; ``weights`` — optional
``{feature: weight >= 0}`` (default 1). Only the target's features count. Closeness, per
feature: the distance ``|x - t| / s``, where the scale ``s`` is the largest absolute value of
that feature among the survivors and the target (1 if that is 0), so units do not dominate and
a distance is within [0, 1] for non-negative values. The score is one minus the weighted root
mean square of those distances, ``1 - sqrt(sum(w d²) / sum(w))`` (1 when every weight is 0):
1.0 for a cluster that matches the target exactly, lower the further it is, so a one-feature
target (``{"gpu_memory": 49152}``) ranks by how near each cluster's value is. Every feature is
non-negative, so scores are in [0, 1] unless the target is negative (then down to -1).
The answer is the documents, each a copy with ``"similarity"`` (float) added, by score descending,
ties by cluster ``id`` ascending. Without a ``target`` the order is ``reputation`` descending, then
``id``, and ``similarity`` is the reputation. The caller keeps the first ``return`` K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np

from apportion.errors import InvalidRequest

Document = Mapping[str, Any]
_PARAMS_PATH: Final = "search.rankingPolicyRule.parameters"


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _gpu_utilization(_: Document, metrics: Document | None) -> float:
    nodes = _get(metrics, "nodes")
    if not isinstance(nodes, list):
        return 0.0
    values = [
        _number(util)
        for node in nodes
        if isinstance(util := _get(node, "gpu", "avgCudaUtilization"), int | float)
        and not isinstance(util, bool)
    ]
    return sum(values) / len(values) if values else 0.0


FEATURES: Final[dict[str, Callable[[Document, Document | None], float]]] = {
    "gpus": lambda c, m: _number(_get(c, "gpus", "count")),
    "gpu_memory": lambda c, m: _number(_get(c, "gpus", "memory")),
    "vcpus": lambda c, m: _number(_get(c, "vcpus", "count")),
    "memory": lambda c, m: _number(_get(c, "memory")),
    "free_gpu_memory": lambda c, m: _number(_get(m, "cluster", "gpu", "totalFreeMem")),
    "gpu_utilization": _gpu_utilization,
    "reputation": lambda c, m: _number(_get(c, "reputation")),
}


def _numeric_map(raw: Any, name: str, *, non_negative: bool) -> dict[str, float]:
    """Validate ``{feature: number}`` under ``parameters.<name>``; raise InvalidRequest."""
    path = f"{_PARAMS_PATH}.{name}"
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidRequest(
            f"{path}: {name} must be a non-empty object of feature → number; "
            f"features: {', '.join(FEATURES)}",
            path=path,
        )
    out: dict[str, float] = {}
    for feature, value in raw.items():
        if feature not in FEATURES:
            raise InvalidRequest(
                f"{path}.{feature}: unknown feature {feature!r}; use one of {', '.join(FEATURES)}",
                path=f"{path}.{feature}",
            )
        number = _number(value)
        if number != value or (non_negative and number < 0):
            need = "a number ≥ 0" if non_negative else "a finite number"
            raise InvalidRequest(
                f"{path}.{feature}: {name} for {feature!r} must be {need}, not {value!r}",
                path=f"{path}.{feature}",
            )
        out[feature] = number
    return out


def _validate(parameters: Mapping[str, Any]) -> tuple[dict[str, float] | None, dict[str, float]]:
    target = parameters.get("target")
    weights = parameters.get("weights")
    return (
        None if target is None else _numeric_map(target, "target", non_negative=False),
        {} if weights is None else _numeric_map(weights, "weights", non_negative=True),
    )


def _cluster_id(doc: Document) -> str:
    return str(doc.get("id", ""))


def rank(
    docs: list[Document], target: dict[str, float] | None, weights: dict[str, float]
) -> list[dict[str, Any]]:
    """Score and order ``docs`` (see the module docstring); pure, no validation."""
    if target is None:
        scores = [FEATURES["reputation"](d, None) for d in docs]
    else:
        names = list(target)
        matrix = np.array(
            [[FEATURES[n](d, d.get("cluster_metrics")) for n in names] for d in docs],
            dtype=np.float64,
        ).reshape(len(docs), len(names))
        goal = np.array([target[n] for n in names], dtype=np.float64)
        scale = np.maximum(np.abs(matrix).max(axis=0, initial=0.0), np.abs(goal))
        scale[scale == 0] = 1.0
        weight = np.array([weights.get(n, 1.0) for n in names], dtype=np.float64)
        weight /= max(
            float(weight.max()), 1e-300
        )  # the same ratios, and a sum that cannot overflow
        total = float(weight.sum())
        distance = matrix / scale - goal / scale  # each term within [-1, 1]: no overflow
        mean_square = (distance**2 @ weight) / total if total > 0 else np.zeros(len(docs))
        scores = (1.0 - np.sqrt(mean_square)).tolist()
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], _cluster_id(docs[i])))
    return [{**docs[i], "similarity": float(scores[i])} for i in order]


class SimilarityPolicy:
    """The built-in ``similarity:1.0-stable`` ranking policy (seed-format class).

    Built by the policy loader as ``SimilarityPolicy(rule_id, settings, parameters)``; stored
    parameters are validated here, request parameters again in :meth:`eval`.
    """

    def __init__(
        self, rule_id: str, settings: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> None:
        self.rule_id = rule_id
        self.settings = settings
        self.parameters = parameters
        _validate(parameters)

    def eval(
        self, parameters: Mapping[str, Any], input_data: Any, context: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Rank ``input_data`` (a list of cluster documents) for a search.

        Called by the engine once per search, after filtering. Returns every document, each a
        copy with ``"similarity"``, best first. Raises :class:`InvalidRequest` for an unknown
        feature or a non-numeric target or weight (path ``search.rankingPolicyRule.parameters.…``).
        """
        target, weights = _validate(parameters)
        if not isinstance(input_data, list) or not all(isinstance(d, Mapping) for d in input_data):
            raise InvalidRequest(
                "search: the similarity policy ranks a list of cluster documents", path="search"
            )
        return rank(input_data, target, weights)

    def management(self, action: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """``features`` lists the feature names; other actions answer the seed's error shape."""
        if action == "features":
            return {"status": "success", "features": list(FEATURES)}
        return {"status": "error", "message": f"Unknown action '{action}'"}
