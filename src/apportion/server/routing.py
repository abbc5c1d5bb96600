"""One declaration per REST route: the source of its validation and of its OpenAPI entry.

Every route module builds an :class:`ApiRoutes` table and declares each handler with
:meth:`ApiRoutes.route` (or ``get``/``post``/``put``/``delete``): the scope it needs, the
pydantic model of its query string, the model of its JSON body, the type of its answer, its
success status and the error classes it may raise. The app adds ``table.routes`` to aiohttp;
``GET /openapi.json`` (:mod:`apportion.server.openapi`) is built from ``table.specs``, so the
document lists what the server really checks and answers.

Before the handler runs, the wrapper this module puts around it, in order:

1. checks the scope (:class:`~apportion.errors.Forbidden` naming it);
2. validates the query string with the route's query model — an unknown parameter is refused
   with 400 ``InvalidRequest`` at ``path="query.<name>"``, saying which parameters the route
   accepts (:class:`NoQuery` accepts none), a parameter given twice likewise unless the model
   takes a list;
3. reads the JSON body and validates it with the route's body model (``InvalidRequest`` at
   ``path="body.<field>"``, as everywhere else).

Handlers read the results with :func:`query_of` and :func:`body_of`, naming the model they
expect; asking for another model than the route declares is a programming error
(``TypeError``), so a handler cannot validate with something the document does not show.
``body_doc`` documents a body that another layer validates with its own rules (the registry's
document checks, the allocation protocol's messages, the policy upload form); the wrapper does
not touch such a body.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import wraps
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from apportion.errors import (
    ApportionError,
    Forbidden,
    InvalidJSON,
    InvalidRequest,
    MessageTooLarge,
    Unauthorized,
)
from apportion.jobs.models import parse_model
from apportion.server.auth import Scope, principal_of, require
from apportion.server.http_common import Handler, json_body

M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Handler)
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

_QUERY = web.RequestKey("apportion_query", BaseModel)
_BODY = web.RequestKey("apportion_body", BaseModel)
_RAW_BODY = web.RequestKey("apportion_raw_body", object)


class NoQuery(BaseModel):
    """The query model of a route that takes no query parameters."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RouteSpec:
    """What one route takes and answers; built by :meth:`ApiRoutes.route`, read by the
    wrapper (validation) and by :func:`apportion.server.openapi.openapi_document`.

    ``response`` is a type pydantic can describe (a model, ``list[Model]``, ``dict[str, Any]``)
    or ``None`` for a body that is not JSON, whose media type is ``response_media``.
    ``success`` maps each success status to its description. ``errors`` are the error classes
    the handler raises itself; the statuses of the checks the wrapper and middleware make
    (query, body, key, scope) are added by :attr:`error_classes`."""

    method: Method
    path: str
    handler: Handler
    summary: str
    scope: Scope | None
    public: bool
    query: type[BaseModel]
    body: type[BaseModel] | None
    body_doc: Any
    body_media: str
    response: Any
    response_media: str
    success: Mapping[int, str]
    errors: tuple[type[ApportionError], ...]
    tag: str
    before_body: Callable[[web.Request], None] | None = None
    on_leader: bool = False  # served by the server that runs the jobs (server/forwarding.py)

    @property
    def error_classes(self) -> tuple[type[ApportionError], ...]:
        """Every error class a request to this route may be answered with, in a fixed order."""
        found: list[type[ApportionError]] = [InvalidRequest]  # the query string, at least
        if not self.public:
            found.append(Unauthorized)
        if self.scope not in (None, Scope.READ) or Forbidden in self.errors:
            found.append(Forbidden)
        if self.body is not None or self.body_doc is not None:
            found += [InvalidJSON, MessageTooLarge]
        found += self.errors
        return tuple(dict.fromkeys(found))


class ApiRoutes:
    """A table of declared routes (one per route module); ``routes`` goes to
    ``app.add_routes``, ``specs`` to the OpenAPI document."""

    def __init__(self, tag: str, *, on_leader: bool = False) -> None:
        """``on_leader``: the table's routes read or change the jobs (or what only the server
        that runs them has): a server that does not run them forwards them to the one that
        does (:mod:`apportion.server.forwarding`)."""
        self.tag = tag
        self.on_leader = on_leader
        self.routes = web.RouteTableDef()
        self.specs: list[RouteSpec] = []

    def route(
        self,
        method: Method,
        path: str,
        *,
        scope: Scope | None,
        public: bool = False,
        query: type[BaseModel] = NoQuery,
        body: type[BaseModel] | None = None,
        body_doc: Any = None,
        body_media: str = "application/json",
        response: Any = None,
        response_media: str = "application/json",
        status: int = 200,
        success: Mapping[int, str] | None = None,
        errors: tuple[type[ApportionError], ...] = (),
        before_body: Callable[[web.Request], None] | None = None,
        on_leader: bool | None = None,
    ) -> Callable[[H], H]:
        """Declare a route (module level, at import). ``scope=None`` on a non-public route
        means any valid key; ``status`` is the success status unless ``success`` lists
        several. ``before_body`` may refuse the request (raise) before its body is read: a
        route that can tell it will refuse does not wait for a body (the connection is then
        closed). ``on_leader`` overrides the table's. Registers the checking wrapper in
        :attr:`routes` and returns the handler itself, unchanged."""
        if public and scope is not None:
            raise ValueError(f"{method} {path}: a public route needs no scope")

        def declare(handler: H) -> H:
            doc = (handler.__doc__ or "").strip().splitlines()
            spec = RouteSpec(
                method=method,
                path=path,
                handler=handler,
                summary=doc[0] if doc else "",
                scope=scope,
                public=public,
                query=query,
                body=body,
                body_doc=body_doc,
                body_media=body_media,
                response=response,
                response_media=response_media,
                success=success or {status: "success"},
                errors=errors,
                tag=self.tag,
                before_body=before_body,
                on_leader=self.on_leader if on_leader is None else on_leader,
            )
            self.specs.append(spec)
            checked = _checked(spec)
            _SPECS[checked] = spec
            self.routes.route(method, path)(checked)
            return handler

        return declare

    def get(self, path: str, **options: Any) -> Callable[[H], H]:
        """:meth:`route` with method GET."""
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[H], H]:
        """:meth:`route` with method POST."""
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[H], H]:
        """:meth:`route` with method PUT."""
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[H], H]:
        """:meth:`route` with method PATCH."""
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[H], H]:
        """:meth:`route` with method DELETE."""
        return self.route("DELETE", path, **options)


_SPECS: dict[object, RouteSpec] = {}


def spec_of(handler: object) -> RouteSpec | None:
    """The declaration of a handler the app registered (``route.handler``); ``None`` for a
    route not declared here (Socket.IO's)."""
    return _SPECS.get(handler)


def declared_specs(app: web.Application) -> list[RouteSpec]:
    """The declarations of every route ``app`` serves, in registration order (HEAD, which
    aiohttp adds beside each GET, is the GET's)."""
    found = (spec_of(route.handler) for route in app.router.routes() if route.method != "HEAD")
    return [spec for spec in found if spec is not None]


def _checked(spec: RouteSpec) -> Handler:
    @wraps(spec.handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        if spec.scope is not None:
            require(principal_of(request), spec.scope)
        request[_QUERY] = parse_query(spec.query, request.query)
        if spec.before_body is not None:
            spec.before_body(request)
        if spec.body is not None:
            raw = await json_body(request)
            request[_RAW_BODY] = raw
            request[_BODY] = parse_model(spec.body, raw)
        return await spec.handler(request)

    return checked


def query_of(request: web.Request, model: type[M]) -> M:
    """The validated query of this request; ``model`` must be the route's query model."""
    return _typed(request[_QUERY], model, "query")


def body_of(request: web.Request, model: type[M]) -> M:
    """The validated JSON body of this request; ``model`` must be the route's body model."""
    return _typed(request[_BODY], model, "body")


def raw_body_of(request: web.Request) -> Any:
    """The JSON body as sent, after the route's body model accepted it: for services that
    take the document itself (and validate it again with the same model)."""
    return request[_RAW_BODY]


def _typed(value: BaseModel, model: type[M], what: str) -> M:
    if not isinstance(value, model):
        raise TypeError(
            f"the handler reads its {what} as {model.__name__}, "
            f"but the route declares {type(value).__name__}"
        )
    return value


# ---------------------------------------------------------------- query strings
def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    """Validate a query string (aiohttp's ``request.query``, a multidict) with ``model``.

    An empty value counts as absent. Unknown names and repeated single-valued names are
    refused; a list field takes every occurrence. Errors are :class:`InvalidRequest` with
    ``path="query.<name>"`` and a message saying what the parameter must be."""
    accepted = model.model_fields
    values: dict[str, Any] = {}
    getall = getattr(query, "getall", None)
    for name in dict.fromkeys(query):
        every = [v for v in (getall(name) if getall else [query[name]]) if v != ""]
        if name not in accepted:
            listed = ", ".join(accepted) if accepted else "none"
            raise InvalidRequest(
                f"unknown query parameter {name!r}; this route accepts: {listed}",
                path=f"query.{name}",
                details={"accepted": list(accepted)},
            )
        if not every:
            continue
        if _is_list(accepted[name].annotation):
            values[name] = every
        elif len(every) > 1:
            raise InvalidRequest(
                f"query parameter {name!r} is given {len(every)} times; give it once",
                path=f"query.{name}",
            )
        else:
            values[name] = every[0]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        raise InvalidRequest(
            f"query parameter {name!r} must be {_wanted(model, name)}, not {values.get(name)!r}",
            path=f"query.{name}",
        ) from None


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list


def _wanted(model: type[BaseModel], name: str) -> str:
    """What a query field must be, in words, from its annotation and bounds."""
    info = model.model_fields[name]
    kind = info.annotation
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "one of " + ", ".join(str(m.value) for m in kind)
    if kind is int:
        low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
        high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
        if low is not None and (high is None or high >= 2**62):
            return f"an integer ≥ {low}"
        if low is not None:
            return f"an integer from {low} to {high}"
        return "an integer"
    return "a string"
