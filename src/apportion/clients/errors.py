"""Typed exceptions of the Python client, carrying what the server said.

Every failure the server answers with its envelope ``{"success": false, "message",
"error": {"code", "details"}}`` (REST or WebSocket) becomes one of these, chosen by
``error.code``; a server that cannot be reached becomes :class:`ServerUnreachableError`
naming the URL. Callers catch a family (``NotFoundError``) or the base
(:class:`ApportionClientError`) and read ``code``, ``message``, ``details`` and ``status``.
"""

from __future__ import annotations

from typing import Any


class ApportionClientError(Exception):
    """Base of every client error. ``code`` is the server's error code (CONTRACTS §2) or a
    client-side code (``Unreachable``, ``Timeout``, ``ProtocolError``); ``status`` is the HTTP
    status when the error came over REST (None over the WebSocket or for client errors)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "Internal",
        details: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details: dict[str, Any] = details or {}
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFoundError(ApportionClientError):
    """``NotFound``, ``UnknownPolicy``, ``UnknownAllocation``: the id names nothing."""


class UnauthorizedError(ApportionClientError):
    """``Unauthorized``: no key, or a wrong or revoked one."""


class ForbiddenError(ApportionClientError):
    """``Forbidden``: the key's scope is too low (``details["needed"]`` names the scope)."""


class InvalidRequestError(ApportionClientError):
    """``InvalidRequest``, ``InvalidJSON``, ``MessageTooLarge``: fix the request;
    ``details["path"]`` names the field when the server knows it."""


class NoFeasiblePlacementError(ApportionClientError):
    """``NoFeasiblePlacement``: a rejection, not a failure; ``details`` carry the reasons."""


class ConflictError(ApportionClientError):
    """``Conflict``: the state does not allow this now (an existing name, a started job)."""


class PolicyFailureError(ApportionClientError):
    """``PolicyError``, ``PolicyTimeout``, ``InvalidPolicyOutput``: the policy broke."""


class RateLimitedError(ApportionClientError):
    """``RateLimited``: slow down and retry."""


class UnavailableError(ApportionClientError):
    """``Unavailable``: the server cannot reach its database for now; retry in a few
    seconds (it recovers by itself)."""


class ServerError(ApportionClientError):
    """``Internal`` or any code this client does not know."""


class ServerUnreachableError(ApportionClientError):
    """The server could not be reached (refused, reset, DNS); the message names the URL."""


class ConnectionLostError(ServerUnreachableError):
    """The allocation WebSocket closed while this request was in flight; whether the server
    acted on it is unknown (a hold may exist: list ``allocations`` to check)."""


class WaitTimeoutError(ApportionClientError, TimeoutError):
    """A wait (``wait(job_id, timeout)``) ran out of time; the job is still going."""


_FAMILIES: dict[str, type[ApportionClientError]] = {
    "NotFound": NotFoundError,
    "UnknownPolicy": NotFoundError,
    "UnknownAllocation": NotFoundError,
    "Unauthorized": UnauthorizedError,
    "Forbidden": ForbiddenError,
    "InvalidRequest": InvalidRequestError,
    "InvalidJSON": InvalidRequestError,
    "MessageTooLarge": InvalidRequestError,
    "NoFeasiblePlacement": NoFeasiblePlacementError,
    "Conflict": ConflictError,
    "PolicyError": PolicyFailureError,
    "PolicyTimeout": PolicyFailureError,
    "InvalidPolicyOutput": PolicyFailureError,
    "RateLimited": RateLimitedError,
    "Unavailable": UnavailableError,
}

_BY_STATUS: dict[int, str] = {
    400: "InvalidRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "MessageTooLarge",
    429: "RateLimited",
    503: "Unavailable",
}


def error_from_envelope(body: Any, *, status: int | None = None) -> ApportionClientError:
    """The typed error for a failure answer. ``body`` is the decoded JSON (or anything else,
    e.g. a proxy's HTML page, when the answer was not an envelope); ``status`` the HTTP status."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or "Internal")
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
        message = str(body.get("message") or code)
    else:
        code = _BY_STATUS.get(status or 0, "Internal")
        details = {}
        text = body if isinstance(body, str) else repr(body)
        message = f"the server answered HTTP {status}: {text.strip()[:300]}"
    cls = _FAMILIES.get(code, ServerError)
    return cls(message, code=code, details=details, status=status)


__all__ = [
    "ApportionClientError",
    "ConflictError",
    "ConnectionLostError",
    "ForbiddenError",
    "InvalidRequestError",
    "NoFeasiblePlacementError",
    "NotFoundError",
    "PolicyFailureError",
    "RateLimitedError",
    "ServerError",
    "ServerUnreachableError",
    "UnauthorizedError",
    "UnavailableError",
    "WaitTimeoutError",
    "error_from_envelope",
]
