"""Typed errors that carry their facts as fields.

Every error a user can see has a stable ``code`` (the wire contract, CONTRACTS §2),
a message that says what to fix, optional ``details`` (for validation errors, the
``path`` of the offending field) and the HTTP status the REST API answers with.
Raise them anywhere; the edges (WebSocket, REST) turn them into the envelope
``{"success": false, "message", "error": {"code", "details"}}``.

The class is the one source of an error's wire ``code`` and HTTP status: the REST error
middleware answers ``exc.http_status``, and where only an envelope is left (``POST /allocate``
mirrors the WebSocket's answer) :func:`http_status_of` finds the status of its ``code`` from the
class that defines that code. The OpenAPI document lists each route's statuses from the
classes it declares.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    """The error codes of the wire contract."""

    INVALID_JSON = "InvalidJSON"
    INVALID_REQUEST = "InvalidRequest"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    NOT_FOUND = "NotFound"
    UNKNOWN_POLICY = "UnknownPolicy"
    POLICY_ERROR = "PolicyError"
    POLICY_TIMEOUT = "PolicyTimeout"
    INVALID_POLICY_OUTPUT = "InvalidPolicyOutput"
    NO_FEASIBLE_PLACEMENT = "NoFeasiblePlacement"
    CONFLICT = "Conflict"
    UNKNOWN_ALLOCATION = "UnknownAllocation"
    MESSAGE_TOO_LARGE = "MessageTooLarge"
    RATE_LIMITED = "RateLimited"
    REQUEST_TIMEOUT = "RequestTimeout"
    UNAVAILABLE = "Unavailable"
    INTERNAL = "Internal"


class ApportionError(Exception):
    """Base of every error that reaches a user.

    ``message`` is human-readable and says what to do; ``details`` is a JSON-able
    dict of facts (never secrets).
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    http_status: ClassVar[int] = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:  # the class that defines a code also defines its status
            _CLASS_OF_CODE.setdefault(cls.code, cls)

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_error(self) -> dict[str, Any]:
        """The ``error`` member of the envelope."""
        return {"code": self.code.value, "details": self.details}

    def envelope(self, request_id: str | None = None) -> dict[str, Any]:
        """The full failure envelope, with ``request_id`` when the request had one."""
        body: dict[str, Any] = {"success": False, "message": self.message, "error": self.to_error()}
        if request_id is not None:
            body["request_id"] = request_id
        return body


_CLASS_OF_CODE: dict[ErrorCode, type[ApportionError]] = {}


def http_status_of(code: str) -> int:
    """The HTTP status of an envelope's ``error.code``: that of the class defining the code
    (500 for a code no class defines). Called by ``POST /allocate``, which mirrors the
    WebSocket's envelope; a subclass that keeps its parent's code and changes the status
    (:class:`InvalidDocument`) is answered by the middleware from the exception itself."""
    known = code in ErrorCode.__members__.values()
    return _CLASS_OF_CODE[ErrorCode(code)].http_status if known else 500


class InvalidJSON(ApportionError):
    code = ErrorCode.INVALID_JSON
    http_status = 400


class InvalidRequest(ApportionError):
    """A field is missing, of the wrong type or out of range; ``path`` names it."""

    code = ErrorCode.INVALID_REQUEST
    http_status = 400

    def __init__(
        self, message: str, *, path: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        merged = dict(details or {})
        if path is not None:
            merged.setdefault("path", path)
        super().__init__(message, details=merged)
        self.path = path


class InvalidDocument(InvalidRequest):
    """A well-formed document whose content does not hold together (e.g. aggregates that
    do not add up): 422, with the same code and ``path`` as :class:`InvalidRequest`."""

    http_status = 422


class RangeNotSatisfiable(InvalidRequest):
    """A ``Range`` that starts past the end of what is there: 416, with the same code as
    :class:`InvalidRequest`; ``details["size"]`` is the length there is."""

    http_status = 416


class MethodNotAllowed(InvalidRequest):
    """A route exists at the path but not for the method: 405, with the same code as
    :class:`InvalidRequest`; ``details["allowed"]`` lists the methods it has."""

    http_status = 405


class Unauthorized(ApportionError):
    code = ErrorCode.UNAUTHORIZED
    http_status = 401


class Forbidden(ApportionError):
    code = ErrorCode.FORBIDDEN
    http_status = 403


class NotFound(ApportionError):
    code = ErrorCode.NOT_FOUND
    http_status = 404


class UnknownPolicy(ApportionError):
    code = ErrorCode.UNKNOWN_POLICY
    http_status = 404


class PolicyError(ApportionError):
    """The policy raised, or its worker died; ``details`` name the policy and its exception."""

    code = ErrorCode.POLICY_ERROR
    http_status = 500


class PolicyTimeout(ApportionError):
    code = ErrorCode.POLICY_TIMEOUT
    http_status = 504


class InvalidPolicyOutput(ApportionError):
    code = ErrorCode.INVALID_POLICY_OUTPUT
    http_status = 502


class NoFeasiblePlacement(ApportionError):
    """A rejection, not a failure: ``details["rejections"]`` carries per-candidate reasons."""

    code = ErrorCode.NO_FEASIBLE_PLACEMENT
    http_status = 409


class Conflict(ApportionError):
    code = ErrorCode.CONFLICT
    http_status = 409


class HeldElsewhere(Conflict):
    """The database refused a hold: another server sharing it holds some of its GPUs. Worth
    deciding again (the holds that have them are known now)."""


class UnknownAllocation(ApportionError):
    code = ErrorCode.UNKNOWN_ALLOCATION
    http_status = 404


class MessageTooLarge(ApportionError):
    code = ErrorCode.MESSAGE_TOO_LARGE
    http_status = 413


class RateLimited(ApportionError):
    code = ErrorCode.RATE_LIMITED
    http_status = 429


class RequestTimeout(ApportionError):
    """A request's body did not arrive in time (a slow client holding a connection)."""

    code = ErrorCode.REQUEST_TIMEOUT
    http_status = 408


class Unavailable(ApportionError):
    """Something the server needs is unreachable for now (its PostgreSQL database): retry in
    a few seconds; the server recovers by itself once it is back."""

    code = ErrorCode.UNAVAILABLE
    http_status = 503


class Internal(ApportionError):
    code = ErrorCode.INTERNAL
    http_status = 500
