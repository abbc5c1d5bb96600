"""One decoded message in, one answer envelope out: shared by the WebSocket and ``POST /allocate``.

A policy's traceback (``error.details.traceback`` of a ``PolicyError``) is the policy author's:
it is shown to ``policies`` and ``admin`` keys and written to the server log; other keys get the
error without it (it shows the policy's code and paths).

Scopes: an adhoc allocation only reads (``read``); holding, releasing and
renewing change state (``submit``); ``management`` reaches into a policy
(``admin``: it changes the policy for every account). Every failure becomes the error envelope with its code; an
unexpected exception is logged with an id and answered ``Internal``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from apportion.allocation.messages import (
    AllocationRequest,
    ManagementMessage,
    ReleaseMessage,
    RenewMessage,
    parse_message,
    request_id_of,
)
from apportion.allocation.service import AllocationService
from apportion.errors import ApportionError, Internal
from apportion.server.auth import Principal, Scope, require

log = logging.getLogger(__name__)


async def answer(service: AllocationService, raw: Any, principal: Principal) -> dict[str, Any]:
    """The answer to one decoded message (never raises)."""
    request_id = request_id_of(raw)
    try:
        message = parse_message(raw)
        caller = principal.actor
        if isinstance(message, AllocationRequest):
            require(principal, Scope.READ if message.adhoc else Scope.SUBMIT)
            body = (await service.allocate(message, caller)).to_json()
        elif isinstance(message, ReleaseMessage):
            require(principal, Scope.SUBMIT)
            body = await service.release(message.allocation_id, caller)
        elif isinstance(message, RenewMessage):
            require(principal, Scope.SUBMIT)
            body = await service.renew(message.allocation_id, message.lease_seconds, caller)
        elif isinstance(message, ManagementMessage):
            require(principal, Scope.ADMIN)
            body = await service.management(message.policy_rule_uri, message.action, message.data)
        else:  # pragma: no cover - parse_message returns one of the above
            raise AssertionError(type(message))
    except ApportionError as exc:
        return _shown_to(principal, exc.envelope(request_id))
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("internal error answering a request (incident %s)", incident)
        return Internal(
            f"internal error (incident {incident}); the server log has the details",
            details={"incident": incident},
        ).envelope(request_id)
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _shown_to(principal: Principal, envelope: dict[str, Any]) -> dict[str, Any]:
    """``envelope`` as ``principal`` may see it: without a policy's traceback unless the key is
    a policy author's or an admin's (the traceback goes to the log instead)."""
    details = envelope["error"]["details"]
    if "traceback" not in details or principal.scope.allows(Scope.POLICIES):
        return envelope
    log.info(
        "policy %s failed for key %s: %s\n%s",
        details.get("policy_rule_uri"),
        principal.key_id,
        envelope["message"],
        details["traceback"],
    )
    envelope["error"]["details"] = {k: v for k, v in details.items() if k != "traceback"}
    return envelope
