"""The built-in policies, each with its store record: one registry, duplicate names refused."""

from __future__ import annotations

from typing import Any

from apportion.policies.builtins import BUILTIN_POLICIES
from apportion.policies.records import PolicyRecord
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


def builtin_catalog() -> dict[str, tuple[PolicyRecord, type]]:
    """``{uri: (record, class)}`` for every built-in policy."""
    catalog: dict[str, tuple[PolicyRecord, type]] = {}

    def add(record: PolicyRecord, cls: type) -> None:
        uri = str(record.uri)
        if uri in catalog:
            raise ValueError(f"built-in policy {uri} registered twice")
        catalog[uri] = (record, cls)

    for uri, cls in BUILTIN_POLICIES.items():
        name = uri.split(":", 1)[0]
        add(
            PolicyRecord(
                name=name,
                version="1.0",
                release_tag="stable",
                description=f"Built-in: {_DESCRIPTIONS.get(name, name)}.",
                tags=["builtin", "placement"],
                policy_input_schema=_INPUT_SCHEMA,
                policy_output_schema=_OUTPUT_SCHEMA,
            ),
            cls,
        )
    add(
        PolicyRecord(
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
        ),
        SimilarityPolicy,
    )
    return catalog
