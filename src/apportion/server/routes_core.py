"""REST routes: the allocation mirror, allocations, API keys, health and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apportion import __version__
from apportion.errors import InvalidRequest, NotFound, http_status_of
from apportion.server.auth import Scope, principal_of
from apportion.server.auth import Scope as KeyScope
from apportion.server.dispatch import answer, caller_of
from apportion.server.http_common import ctx, json_body, json_response, ok, principal

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: no key needed."""
    context = ctx(request)
    return json_response(
        {"status": "ok", "version": __version__, "clusters": len(context.registry.cluster_ids())}
    )


@routes.post("/allocate")
async def allocate(request: web.Request) -> web.Response:
    """The REST mirror of the allocation WebSocket: same body, same envelope."""
    body = await json_body(request)
    result = await answer(ctx(request).allocations, body, principal_of(request))
    status = 200 if result.get("success") else http_status_of(result["error"]["code"])
    return json_response(result, status=status)


@routes.get("/allocations")
async def list_allocations(request: web.Request) -> web.Response:
    """Active holds (an admin sees all; others see their own)."""
    who = principal(request, Scope.READ)
    holds = ctx(request).holds.active()
    if who.scope is not KeyScope.ADMIN:
        holds = [h for h in holds if h.owner == who.key_id]
    return ok([h.public() for h in holds])


@routes.get("/allocations/{allocation_id}")
async def read_allocation(request: web.Request) -> web.Response:
    """One active hold."""
    who = principal(request, Scope.READ)
    hold = ctx(request).holds.get(request.match_info["allocation_id"])
    if who.scope is not KeyScope.ADMIN and hold.owner != who.key_id:
        raise NotFound(f"no active allocation {hold.allocation_id!r} of this key")
    return ok(hold.public())


@routes.delete("/allocations/{allocation_id}")
async def release_allocation(request: web.Request) -> web.Response:
    """Release a hold now."""
    who = principal(request, Scope.SUBMIT)
    return json_response(
        await ctx(request).allocations.release(request.match_info["allocation_id"], caller_of(who))
    )


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    """API keys (never their secrets)."""
    principal(request, Scope.ADMIN)
    return ok(await ctx(request).keys.list())


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    """Create a key; its secret is in this answer and nowhere else."""
    principal(request, Scope.ADMIN)
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise InvalidRequest("body.name must be a string of 1 to 200 characters", path="body.name")
    try:
        scope = KeyScope(body.get("scope", "submit"))
    except ValueError:
        raise InvalidRequest(
            "body.scope must be one of read, submit, admin", path="body.scope"
        ) from None
    issued = await ctx(request).keys.create(name, scope)
    return ok(
        {
            "key_id": issued.key_id,
            "name": issued.name,
            "scope": issued.scope.value,
            "api_key": issued.secret,
        },
        status=201,
    )


@routes.delete("/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key; it stops working at once."""
    principal(request, Scope.ADMIN)
    if not await ctx(request).keys.revoke(request.match_info["key_id"]):
        raise NotFound(f"no key {request.match_info['key_id']!r}; list keys with GET /keys")
    return json_response({"success": True})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """An OpenAPI 3.1 document listing every route of this server."""
    return json_response(openapi_document(request.app))


def openapi_document(app: web.Application) -> dict[str, Any]:
    """Build the document from the router: every route, with its handler's docstring as summary."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        info = route.resource.get_info()
        path = info.get("formatter") or info.get("path")
        if not path or path.startswith("/socket.io"):
            continue
        doc = (getattr(route.handler, "__doc__", None) or "").strip().splitlines()
        paths.setdefault(path, {})[route.method.lower()] = {
            "summary": doc[0] if doc else "",
            "responses": {
                "200": {"description": "success"},
                "default": {"description": "error envelope"},
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Apportion", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
