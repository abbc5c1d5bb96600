"""REST routes: the allocation mirror, allocations, accounts, API keys, health and the OpenAPI
document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apportion import __version__
from apportion.accounts import check_account_name, unknown_account
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
    InvalidRequest,
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
from apportion.server.auth import Scope, principal_of
from apportion.server.dispatch import answer
from apportion.server.http_common import ctx, json_body, json_response, ok
from apportion.server.openapi import openapi_document
from apportion.server.routing import ApiRoutes, body_of, declared_specs, query_of
from apportion.server.schemas import (
    AccountChange,
    AccountCreate,
    Accounts,
    Ack,
    AllocationAnswer,
    Healthz,
    Holds,
    KeyCreate,
    KeyIssued,
    KeyRevokeQuery,
    Keys,
    OneAccount,
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
    """Active holds of the key's account (an operator or admin key: of every account;
    apportion.ownership)."""
    who = principal_of(request).actor
    holds = ctx(request).holds.active()
    return ok([h.public() for h in holds if who.may_see(h.owner)])


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
    """Release a hold now. Another account's hold answers exactly as an unknown id does."""
    hold = _visible_hold(request)
    return json_response(
        await ctx(request).allocations.release(hold.allocation_id, principal_of(request).actor)
    )


def _visible_hold(request: web.Request) -> Hold:
    """The active hold the path names, if the calling key may see it (apportion.ownership);
    otherwise the one ``UnknownAllocation`` answer, whether the id is unknown or another
    account's, so these routes are no oracle of who holds what."""
    who = principal_of(request).actor
    allocation_id = request.match_info["allocation_id"]
    hold = ctx(request).holds.get(allocation_id)
    if not who.may_see(hold.owner):
        raise unknown_allocation(allocation_id)
    return hold


@api.get("/accounts", scope=Scope.OPERATOR, response=Accounts)
async def list_accounts(request: web.Request) -> web.Response:
    """Every account, by name."""
    return ok([a.public() for a in ctx(request).accounts.all()])


@api.post(
    "/accounts",
    scope=Scope.ADMIN,
    body=AccountCreate,
    response=OneAccount,
    status=201,
    errors=(Conflict,),
)
async def create_account(request: web.Request) -> web.Response:
    """Create an account; its jobs run as ``os_user`` (default: the server's ``job_user``),
    which must exist on this host and must not be root."""
    body = body_of(request, AccountCreate)
    account = await ctx(request).accounts.create(
        body.name, os_user=body.os_user, description=body.description, shares=body.shares
    )
    return ok(account.public(), status=201)


@api.patch(
    "/accounts/{name}",
    scope=Scope.ADMIN,
    body=AccountChange,
    response=OneAccount,
    errors=(NotFound,),
)
async def change_account(request: web.Request) -> web.Response:
    """Change an account's fair-share ``shares`` (docs/scheduling.md)."""
    body = body_of(request, AccountChange)
    account = await ctx(request).accounts.set_shares(request.match_info["name"], body.shares)
    return ok(account.public())


@api.get("/accounts/{name}", scope=Scope.READ, response=OneAccount, errors=(NotFound,))
async def read_account(request: web.Request) -> web.Response:
    """One account: any key's own; every account for an operator or admin key (another
    account answers as an unknown one)."""
    name = request.match_info["name"]
    if not principal_of(request).actor.may_see_account(name):
        raise unknown_account(name)
    return ok(ctx(request).accounts.get(name).public())


@api.get("/keys", scope=Scope.ADMIN, response=Keys)
async def list_keys(request: web.Request) -> web.Response:
    """API keys (never their secrets)."""
    return ok(await ctx(request).keys.list())


@api.post("/keys", scope=Scope.ADMIN, body=KeyCreate, response=KeyIssued, status=201)
async def create_key(request: web.Request) -> web.Response:
    """Create a key acting for ``account`` (default ``default``) and naming ``user`` (default:
    its name); its secret is in this answer and nowhere else."""
    body = body_of(request, KeyCreate)
    check_account_name(body.account, field="body.account")
    if not ctx(request).accounts.exists(body.account):
        raise InvalidRequest(
            f"body.account {body.account!r} does not exist; create it first with POST /accounts",
            path="body.account",
        )
    issued = await ctx(request).keys.create(
        body.name, body.scope, account=body.account, user=body.user
    )
    return ok(
        {
            "key_id": issued.key_id,
            "name": issued.name,
            "scope": issued.scope.value,
            "account": issued.account,
            "user": issued.user,
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
