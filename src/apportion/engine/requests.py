"""The ``inputs`` of the built-in placement policies (CONTRACTS §3), parsed and checked.

Called by the built-in policies (:mod:`apportion.policies.builtins`) on every evaluation (a
job's workers arrive as the gang form), and by the allocation service for the shape of a
seed-contract policy's expected output (:func:`gang_items`). Pure:
no I/O. Every error is :class:`~apportion.errors.InvalidRequest` naming the field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from apportion.errors import InvalidRequest
from apportion.registry.filters import Predicate, compile_filter

MAX_GPUS = 1024
MAX_REQUESTS = 256
MAX_MODEL_GLOBS = 64

REQUEST_KEYS = ("gpus", "gpu_memory_mb", "gpu_model", "vcpus", "memory_mb", "nvlink", "node_filter")


@dataclass(frozen=True)
class GpuRequest:
    """One placement request: ``gpus`` GPUs (0 = a node, no GPUs) on one node."""

    gpus: int = 1
    gpu_memory_mb: int | None = None
    gpu_model: tuple[str, ...] | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    nvlink: bool = False
    node_filter: Predicate | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.gpu_model, str):
            object.__setattr__(self, "gpu_model", (self.gpu_model,))

    def describe(self) -> str:
        """Human text, e.g. '4 GPUs of model H100* with at least 40960 MB'."""
        text = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}"
        if self.gpu_model:
            text += f" of model {' or '.join(self.gpu_model)}"
        if self.gpu_memory_mb:
            text += f" with at least {self.gpu_memory_mb} MB"
        if self.nvlink:
            text += " in one NVLink domain"
        return text


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _count(value: Any, path: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{path} must be an integer, not {_type_name(value)}", path=path)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequest(f"{path} must be {bound}, not {value}", path=path)
    return value


def _optional_count(req: Mapping[str, Any], key: str, path: str) -> int | None:
    value = req.get(key)
    return None if value is None else _count(value, f"{path}.{key}", low=0)


def _models(value: Any, path: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_MODEL_GLOBS:
        raise InvalidRequest(
            f'{path} must be a model name glob (e.g. "H100*") or a non-empty list of up to '
            f"{MAX_MODEL_GLOBS} of them",
            path=path,
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise InvalidRequest(
                f"{path}[{i}] must be a non-empty string, not {_type_name(item)}",
                path=f"{path}[{i}]",
            )
    return tuple(value)


def parse_request(req: Any, *, path: str) -> GpuRequest:
    """One request object. Unknown keys are refused (the message lists the valid ones)."""
    if not isinstance(req, Mapping):
        raise InvalidRequest(
            f"{path} must be an object with some of {', '.join(REQUEST_KEYS)}", path=path
        )
    for key in req:
        if key not in REQUEST_KEYS:
            raise InvalidRequest(
                f"{path}.{key} is not a request field; valid fields: {', '.join(REQUEST_KEYS)}",
                path=f"{path}.{key}",
            )
    gpus = (
        1 if req.get("gpus") is None else _count(req["gpus"], f"{path}.gpus", low=0, high=MAX_GPUS)
    )
    nvlink = req.get("nvlink", False)
    if nvlink is None:
        nvlink = False
    if not isinstance(nvlink, bool):
        raise InvalidRequest(
            f"{path}.nvlink must be true or false, not {_type_name(nvlink)}", path=f"{path}.nvlink"
        )
    spec = req.get("node_filter")
    node_filter = None if spec in (None, {}) else compile_filter(spec, path=f"{path}.node_filter")
    return GpuRequest(
        gpus=gpus,
        gpu_memory_mb=_optional_count(req, "gpu_memory_mb", path),
        gpu_model=_models(req.get("gpu_model"), f"{path}.gpu_model"),
        vcpus=_optional_count(req, "vcpus", path),
        memory_mb=_optional_count(req, "memory_mb", path),
        nvlink=nvlink,
        node_filter=node_filter,
        raw=dict(req),
    )


def gang_items(inputs: Any) -> list[Any] | None:
    """The request objects of the gang form ``{"requests": [...]}``; None for any other shape.

    The one reading of a gang's shape: :func:`parse_inputs` parses each item for the built-ins;
    for seed-contract policies it says that the output is a list of ``len(items)`` placements."""
    if isinstance(inputs, Mapping):
        items = inputs.get("requests")
        if isinstance(items, list):
            return items
    return None


def parse_inputs(inputs: Any, *, path: str = "inputs") -> tuple[list[GpuRequest], bool]:
    """Parse a built-in policy's ``inputs``: one request object, or
    ``{"requests": [request, ...]}`` (non-empty, at most 256; a gang placed all or nothing).

    Returns ``(requests, is_gang)``; ``is_gang`` is true for the ``requests`` form (even with
    one element), and the policy then answers with a list. ``None`` or ``{}`` is one request
    for one GPU. Raises :class:`InvalidRequest` with the path of the first bad field, e.g.
    ``inputs.requests[1].gpuz``."""
    if inputs is None:
        inputs = {}
    if isinstance(inputs, Mapping) and "requests" in inputs:
        extra = [k for k in inputs if k != "requests"]
        if extra:
            raise InvalidRequest(
                f"{path}.{extra[0]} cannot sit beside {path}.requests; put it inside each request",
                path=f"{path}.{extra[0]}",
            )
        items = gang_items(inputs)
        if not items or len(items) > MAX_REQUESTS:
            raise InvalidRequest(
                f"{path}.requests must be a non-empty list of at most {MAX_REQUESTS} requests",
                path=f"{path}.requests",
            )
        return [parse_request(r, path=f"{path}.requests[{i}]") for i, r in enumerate(items)], True
    return [parse_request(inputs, path=path)], False
