"""Messages of the allocation protocol (CONTRACTS §2), validated with pydantic: the commands of the
allocation service, whichever edge (WebSocket, REST mirror, offline runner) they arrive through.

A message without ``type`` (or with ``type: "allocate"``) is an allocation
request; ``release``, ``renew`` and ``management`` are the other kinds.
Unknown fields are refused, naming the field, so a typo never silently
changes what a request means.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from apportion.errors import InvalidRequest
from apportion.validation import invalid_from_pydantic

REQUEST_ID = Field(None, max_length=200)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AllocationRequest(_Message):
    """The seed-004 request, plus ``request_id``, ``explain`` and ``lease_seconds``."""

    type: Literal["allocate"] = "allocate"
    adhoc: StrictBool = True
    policy_rule_uri: str = Field(min_length=1, max_length=400)
    clusters: list[str] = Field(default_factory=list, max_length=10_000)
    inputs: dict[str, Any]
    filter: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = REQUEST_ID
    explain: StrictBool = False
    lease_seconds: float | None = Field(None, gt=0)


class ReleaseMessage(_Message):
    type: Literal["release"]
    allocation_id: str = Field(min_length=1, max_length=64)
    request_id: str | None = REQUEST_ID


class RenewMessage(_Message):
    type: Literal["renew"]
    allocation_id: str = Field(min_length=1, max_length=64)
    lease_seconds: float | None = Field(None, gt=0)
    request_id: str | None = REQUEST_ID


class ManagementMessage(_Message):
    type: Literal["management"]
    policy_rule_uri: str = Field(min_length=1, max_length=400)
    action: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = REQUEST_ID


Message = AllocationRequest | ReleaseMessage | RenewMessage | ManagementMessage

_KINDS: dict[str, type[_Message]] = {
    "allocate": AllocationRequest,
    "release": ReleaseMessage,
    "renew": RenewMessage,
    "management": ManagementMessage,
}


def request_id_of(raw: Any) -> str | None:
    """The ``request_id`` of a raw message, if it has a usable one (for error answers)."""
    if isinstance(raw, dict):
        rid = raw.get("request_id")
        if isinstance(rid, str) and len(rid) <= 200:
            return rid
    return None


def parse_message(raw: Any) -> Message:
    """Validate a decoded JSON message; :class:`InvalidRequest` naming the field otherwise."""
    if not isinstance(raw, dict):
        raise InvalidRequest(
            f"a message must be a JSON object, not {type(raw).__name__}; "
            'send {"policy_rule_uri": ..., "inputs": {...}}',
            path="",
        )
    kind = raw.get("type", "allocate")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidRequest(
            f"type {kind!r} is not a message kind; use one of {', '.join(_KINDS)} "
            "(or leave type out for an allocation request)",
            path="type",
        )
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, allowed=list(model.model_fields)) from None
