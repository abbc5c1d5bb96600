"""Helpers every REST route uses: JSON bodies, envelopes and the error middleware.

Scopes, query strings and declared bodies are checked by the route wrapper of
:mod:`apportion.server.routing`; the error middleware answers every error with the status of
its class (:attr:`~apportion.errors.ApportionError.http_status`).

A body must arrive in time (:class:`BodyDeadline`): a client that trickles it is answered 408
``RequestTimeout`` and its connection closed, so slow bodies cannot hold the connection cap. An
answer given before a request's body was read to its end (an error, a refusal) closes the
connection instead of reading the rest (the app's runner has no lingering time)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from apportion import jsonutil
from apportion.errors import (
    ApportionError,
    Internal,
    InvalidRequest,
    MessageTooLarge,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    Unauthorized,
)
from apportion.server.context import CONTEXT, ServerContext

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


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


@dataclass(frozen=True)
class BodyDeadline:
    """How long a request body may take: ``base_seconds``, plus one second per
    ``min_bytes_per_second`` of its declared length (of the largest body the app takes when it
    declares none)."""

    base_seconds: float = 10.0
    min_bytes_per_second: float = 64 * 1024

    def seconds_for(self, request: web.Request) -> float:
        length = request.content_length
        if length is None:
            length = request.app._client_max_size
        return self.base_seconds + length / self.min_bytes_per_second


BODY_DEADLINE: web.AppKey[BodyDeadline] = web.AppKey("apportion_body_deadline", BodyDeadline)


async def within_body_deadline(request: web.Request, read: Awaitable[T]) -> T:
    """``await read`` (reading the request's body), but at most as long as the app's
    :class:`BodyDeadline` allows; :class:`RequestTimeout` otherwise."""
    deadline = request.app.get(BODY_DEADLINE, BodyDeadline())
    seconds = deadline.seconds_for(request)
    try:
        async with asyncio.timeout(seconds):
            return await read
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {seconds:.0f} s; send it at once (at"
            f" least {deadline.min_bytes_per_second / 1024:.0f} KiB/s)",
            details={"seconds": round(seconds, 1)},
        ) from None


async def json_body(request: web.Request, *, kind: type = dict) -> Any:
    """The request's JSON body, read within the body deadline; :class:`InvalidJSON` /
    :class:`InvalidRequest` when unusable, :class:`RequestTimeout` when too slow."""
    try:
        raw = await within_body_deadline(request, request.read())
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


def paged_response(
    request: web.Request,
    items: Sequence[T],
    offset: int,
    limit: int,
    public: Callable[[T], Any],
) -> web.Response:
    """One page of ``items`` (each shown by ``public``), paged as GitHub's API pages: the total
    in ``X-Total-Count``, and ``Link: <next page's URL>; rel="next"`` while there is one."""
    page = items[offset : offset + limit]
    response = json_response([public(item) for item in page])
    response.headers["X-Total-Count"] = str(len(items))
    if offset + len(page) < len(items):
        following = request.url.update_query(offset=offset + len(page))
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


@dataclass(frozen=True)
class ByteRange:
    """One HTTP byte range: ``start``–``end`` (``end`` None: to the end), or the last
    ``suffix`` bytes (``start`` None)."""

    start: int | None
    end: int | None = None
    suffix: int | None = None


def parse_byte_range(header: str | None) -> ByteRange | None:
    """The one range of a ``Range`` header (``bytes=0-9``, ``bytes=10-``, ``bytes=-10``);
    None without the header; :class:`InvalidRequest` naming ``Range`` for anything else (several
    ranges, another unit, an end before the start)."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    well_formed = (
        unit.strip() == "bytes"
        and dash == "-"
        and "," not in spec
        and (not first or (first.isascii() and first.isdigit()))
        and (not last or (last.isascii() and last.isdigit()))
        and bool(first or last)
    )
    if not well_formed:
        raise InvalidRequest(
            f"Range {header[:80]!r} is not one byte range; send bytes=START-END, bytes=START- or"
            " bytes=-LENGTH (the last LENGTH bytes)",
            path="Range",
        )
    if not first:
        return ByteRange(None, suffix=int(last))
    start, end = int(first), int(last) if last else None
    if end is not None and end < start:
        raise InvalidRequest(f"Range {header!r} ends before it starts", path="Range")
    return ByteRange(start, end)


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
