"""Helpers every REST route uses: JSON bodies, envelopes and the error middleware.

Scopes, query strings and declared bodies are checked by the route wrapper of
:mod:`apportion.server.routing`; the error middleware answers every error with the status of
its class (:attr:`~apportion.errors.ApportionError.http_status`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from apportion import jsonutil
from apportion.errors import (
    ApportionError,
    Internal,
    InvalidRequest,
    MessageTooLarge,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
)
from apportion.server.context import CONTEXT, ServerContext

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ctx(request: web.Request) -> ServerContext:
    return request.app[CONTEXT]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=jsonutil.dumps(body), status=status, content_type="application/json")


def error_response(exc: ApportionError, request_id: str | None = None) -> web.Response:
    """The envelope of ``exc`` with the status of its class (and ``WWW-Authenticate`` on a
    401); the error middleware and the auth middleware answer every error through this."""
    response = json_response(exc.envelope(request_id), status=exc.http_status)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="apportion"'
    return response


async def json_body(request: web.Request, *, kind: type = dict) -> Any:
    """The request's JSON body; :class:`InvalidJSON` / :class:`InvalidRequest` when unusable."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size
        raise MessageTooLarge(
            f"the body is over the limit of {limit} bytes", details={"limit_bytes": limit}
        ) from None
    if not raw:
        raise InvalidRequest("the request needs a JSON body", path="body")
    body = jsonutil.loads(raw)
    if not isinstance(body, kind):
        raise InvalidRequest(
            f"the body must be a JSON {'object' if kind is dict else 'array'}", path="body"
        )
    return body


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's, becomes the JSON envelope."""
    try:
        return await handler(request)
    except ApportionError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(
            NotFound(f"no route {request.method} {request.path}; see GET /openapi.json")
        )
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        return error_response(
            MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}",
                details={"allowed": allowed},
            )
        )
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(MessageTooLarge(f"the body is too large: {exc.text}"))
    except web.HTTPException:
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception(
            "internal error on %s %s (incident %s)", request.method, request.path, incident
        )
        return error_response(
            Internal(
                f"internal error (incident {incident}); the server log has the details",
                details={"incident": incident},
            )
        )


def ok(data: Any, status: int = 200) -> web.Response:
    """The seed's ``{"success": true, "data": …}`` envelope."""
    return json_response({"success": True, "data": data}, status=status)
