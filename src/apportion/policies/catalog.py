"""The built-in policies, each with its store record: one registry, duplicate names refused.

Called once at start (``app.py``, the offline runner) to fill the policy store."""

from __future__ import annotations

from typing import Any

from apportion.policies.builtins import BUILTIN_POLICIES
from apportion.policies.records import PolicyRecord
from apportion.policies.store import PolicyEntry
from apportion.registry.similarity import SimilarityPolicy

_GPU_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "gpus": {"type": "integer", "minimum": 0, "description": "GPUs per placement"},
        "gpu_memory_mb": {
            "type": "integer",
            "minimum": 0,
            "description": "minimum memory per GPU (MB)",
        },
        "gpu_model": {"type": ["string", "array"], "description": "model glob or list of globs"},
        "vcpus": {"type": "integer", "minimum": 0},
        "memory_mb": {"type": "integer", "minimum": 0},
        "nvlink": {"type": "boolean"},
        "node_filter": {"type": "object", "description": "filter DSL over the node document"},
    },
    "additionalProperties": False,
}
_INPUT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        _GPU_REQUEST_SCHEMA,
        {
            "type": "object",
            "properties": {
                "requests": {"type": "array", "items": _GPU_REQUEST_SCHEMA, "minItems": 1}
            },
            "required": ["requests"],
        },
    ]
}
_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "cluster_id": {"type": "string"},
        "node_id": {"type": "string"},
        "gpus": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["cluster_id"],
}

_DESCRIPTIONS = {
    "binpack": "the feasible node with the fewest available GPUs left after placement",
    "spread": "the feasible node with the most available GPUs left after placement",
    "topology": "the request's GPUs inside one NVLink domain, the domain with the fewest GPUs left",
}


def builtin_catalog() -> dict[str, PolicyEntry]:
    """``{uri: entry}`` for every built-in policy: the placement policies with their internal
    protocol object (``placer``, what allocations and jobs call) and seed-contract class (for
    ``management``), and the ``similarity`` ranking policy (seed contract only)."""
    catalog: dict[str, PolicyEntry] = {}

    def add(entry: PolicyEntry) -> None:
        if entry.uri in catalog:
            raise ValueError(f"built-in policy {entry.uri} registered twice")
        catalog[entry.uri] = entry

    for cls in BUILTIN_POLICIES.values():
        placement = cls.placement
        record = PolicyRecord(
            name=placement.name,
            version=placement.version,
            release_tag=placement.release_tag,
            description=f"Built-in: {_DESCRIPTIONS.get(placement.name, placement.name)}.",
            tags=["builtin", "placement"],
            policy_input_schema=_INPUT_SCHEMA,
            policy_output_schema=_OUTPUT_SCHEMA,
        )
        add(PolicyEntry(record, "builtin", policy_class=cls, placer=placement))
    similarity = PolicyRecord(
        name="similarity",
        version="1.0",
        release_tag="stable",
        description="Built-in ranking policy for search: clusters by the closeness of their "
        "features to parameters.target.",
        tags=["builtin", "ranking"],
        policy_parameters_schema={
            "type": "object",
            "properties": {
                "target": {"type": "object"},
                "weights": {"type": "object"},
                "return": {"type": "integer", "minimum": 1},
            },
        },
    )
    add(PolicyEntry(similarity, "builtin", policy_class=SimilarityPolicy))
    return catalog
