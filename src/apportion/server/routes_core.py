"""REST routes: the allocation mirror, allocations, API keys, health and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apportion import __version__
from apportion.allocation.hold import Hold
from apportion.allocation.holds import unknown_allocation
from apportion.allocation.messages import (
    AllocationRequest,
    ManagementMessage,
    ReleaseMessage,
    RenewMessage,
)
from apportion.errors import (
    Conflict,
    Forbidden,
    InvalidPolicyOutput,
    MessageTooLarge,
    NoFeasiblePlacement,
    NotFound,
    PolicyError,
    PolicyTimeout,
    RateLimited,
    UnknownAllocation,
    UnknownPolicy,
    http_status_of,
)
from apportion.ownership import may_act_on
from apportion.server.auth import Scope, principal_of
from apportion.server.dispatch import answer, caller_of
from apportion.server.http_common import ctx, json_body, json_response, ok
from apportion.server.openapi import openapi_document
from apportion.server.routing import ApiRoutes, body_of, declared_specs, query_of
from apportion.server.schemas import (
    Ack,
    AllocationAnswer,
    Healthz,
    Holds,
    KeyCreate,
    KeyIssued,
    KeyRevokeQuery,
    Keys,
    OneHold,
)

api = ApiRoutes("core")

ALLOCATION_ERRORS = (
    Forbidden,
    UnknownPolicy,
    UnknownAllocation,
    NoFeasiblePlacement,
    Conflict,
    MessageTooLarge,
    RateLimited,
    PolicyError,
    InvalidPolicyOutput,
    PolicyTimeout,
)


@api.get("/healthz", scope=None, public=True, response=Healthz)
async def healthz(request: web.Request) -> web.Response:
    """Liveness: no key needed."""
    context = ctx(request)
    return json_response(
        {"status": "ok", "version": __version__, "clusters": len(context.registry.cluster_ids())}
    )


@api.post(
    "/allocate",
    scope=None,
    body_doc=AllocationRequest | ReleaseMessage | RenewMessage | ManagementMessage,
    response=AllocationAnswer,
    errors=ALLOCATION_ERRORS,
)
async def allocate(request: web.Request) -> web.Response:
    """The REST mirror of the allocation WebSocket: same body, same envelope.

    The body is one message of the allocation protocol, validated as the WebSocket validates
    it; the scope depends on the message (adhoc: read; hold, release, renew: submit;
    management: admin). Failures answer the protocol's envelope with the status of its code."""
    body = await json_body(request)
    result = await answer(ctx(request).allocations, body, principal_of(request))
    status = 200 if result.get("success") else http_status_of(result["error"]["code"])
    return json_response(result, status=status)


@api.get("/allocations", scope=Scope.READ, response=Holds)
async def list_allocations(request: web.Request) -> web.Response:
    """Active holds (an admin sees all; others their own: apportion.ownership)."""
    who = principal_of(request)
    holds = ctx(request).holds.active()
    mine = [h for h in holds if may_act_on(h.owner, key_id=who.key_id, is_admin=who.is_admin)]
    return ok([h.public() for h in mine])


@api.get(
    "/allocations/{allocation_id}",
    scope=Scope.READ,
    response=OneHold,
    errors=(UnknownAllocation,),
)
async def read_allocation(request: web.Request) -> web.Response:
    """One active hold. Another key's hold answers exactly as an unknown id does."""
    return ok(_visible_hold(request).public())


@api.delete(
    "/allocations/{allocation_id}",
    scope=Scope.SUBMIT,
    response=AllocationAnswer,
    errors=(UnknownAllocation,),
)
async def release_allocation(request: web.Request) -> web.Response:
    """Release a hold now. Another key's hold answers exactly as an unknown id does."""
    hold = _visible_hold(request)
    return json_response(
        await ctx(request).allocations.release(hold.allocation_id, caller_of(principal_of(request)))
    )


def _visible_hold(request: web.Request) -> Hold:
    """The active hold the path names, if the calling key may see it (apportion.ownership);
    otherwise the one ``UnknownAllocation`` answer, whether the id is unknown or another key's,
    so these routes are no oracle of who holds what."""
    who = principal_of(request)
    allocation_id = request.match_info["allocation_id"]
    hold = ctx(request).holds.get(allocation_id)
    if not may_act_on(hold.owner, key_id=who.key_id, is_admin=who.is_admin):
        raise unknown_allocation(allocation_id)
    return hold


@api.get("/keys", scope=Scope.ADMIN, response=Keys)
async def list_keys(request: web.Request) -> web.Response:
    """API keys (never their secrets)."""
    return ok(await ctx(request).keys.list())


@api.post("/keys", scope=Scope.ADMIN, body=KeyCreate, response=KeyIssued, status=201)
async def create_key(request: web.Request) -> web.Response:
    """Create a key; its secret is in this answer and nowhere else."""
    body = body_of(request, KeyCreate)
    issued = await ctx(request).keys.create(body.name, body.scope)
    return ok(
        {
            "key_id": issued.key_id,
            "name": issued.name,
            "scope": issued.scope.value,
            "api_key": issued.secret,
        },
        status=201,
    )


@api.delete(
    "/keys/{key_id}",
    scope=Scope.ADMIN,
    query=KeyRevokeQuery,
    response=Ack,
    errors=(NotFound, Conflict),
)
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key; it stops working at once. Revoking the calling key needs
    ``allow_self=true``, the last active admin key ``allow_last_admin=true`` (else 409)."""
    flags = query_of(request, KeyRevokeQuery)
    revoked = await ctx(request).keys.revoke(
        request.match_info["key_id"],
        by=principal_of(request).key_id,
        allow_self=flags.allow_self,
        allow_last_admin=flags.allow_last_admin,
    )
    if not revoked:
        raise NotFound(f"no key {request.match_info['key_id']!r}; list keys with GET /keys")
    return json_response({"success": True})


@api.get("/openapi.json", scope=None, public=True, response=dict[str, Any])
async def openapi(request: web.Request) -> web.Response:
    """This server's OpenAPI 3.1 document, built from its route declarations."""
    return json_response(openapi_document(declared_specs(request.app)))
