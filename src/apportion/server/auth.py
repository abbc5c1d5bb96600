"""Scopes, principals, and the checks every REST call and WebSocket handshake goes through.

Header parsing, authentication against the key store (:class:`~apportion.server.keys.KeyStore`),
scope checks, the bind check and the aiohttp middleware. Scopes are ordered ``read`` <
``submit`` < ``admin``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from apportion import jsonutil
from apportion.errors import ApportionError, Forbidden, Unauthorized
from apportion.ownership import DEFAULT_ACCOUNT, Actor
from apportion.server.limits import mark_authenticated

if TYPE_CHECKING:
    from apportion.server.keys import KeyStore

HOW_TO_AUTH = "send Authorization: Bearer <key>; create a key with `apportion keys create`"


class Scope(StrEnum):
    """What a key may do (docs/security.md):

    * ``read``: read the fleet, policies and its own account's jobs, holds and events;
      adhoc allocations;
    * ``submit``: ``read``, and submit jobs and hold GPUs in its account;
    * ``policies``: ``read``, and upload, delete and manage policies (a policy author);
    * ``operator``: ``read`` across every account (monitoring, dashboards);
    * ``admin``: everything.
    """

    READ = "read"
    SUBMIT = "submit"
    POLICIES = "policies"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        """True when a key of this scope may do what ``needed`` guards."""
        return needed in _ALLOWS[self]

    @property
    def sees_all_accounts(self) -> bool:
        """True for the scopes that read every account's work."""
        return self in (Scope.OPERATOR, Scope.ADMIN)


_ALLOWS: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.SUBMIT: frozenset({Scope.READ, Scope.SUBMIT}),
    Scope.POLICIES: frozenset({Scope.READ, Scope.POLICIES}),
    Scope.OPERATOR: frozenset({Scope.READ, Scope.OPERATOR}),
    Scope.ADMIN: frozenset(Scope),
}


@dataclass(frozen=True)
class Principal:
    """Who made a request: the verified key's id, name and scope, the account it acts for and
    the user it names."""

    key_id: str
    name: str
    scope: Scope
    account: str
    user: str

    @property
    def is_admin(self) -> bool:
        return self.scope is Scope.ADMIN

    @property
    def actor(self) -> Actor:
        """The principal as :mod:`apportion.ownership`'s rule sees it."""
        return Actor(
            key_id=self.key_id,
            account=self.account,
            user=self.user,
            sees_all=self.scope.sees_all_accounts,
            is_admin=self.is_admin,
        )


ANONYMOUS_ADMIN = Principal(
    key_id="anonymous",
    name="anonymous (auth disabled)",
    scope=Scope.ADMIN,
    account=DEFAULT_ACCOUNT,
    user="anonymous",
)
PRINCIPAL = web.RequestKey("principal", Principal)


def parse_authorization(header: str | None) -> str | None:
    """'Bearer X' or 'Token X' (case-insensitive scheme) → X; anything else → None."""
    if header is None:
        return None
    parts = header.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() not in ("bearer", "token"):
        return None
    credential = parts[1].strip()
    return None if not credential or any(c.isspace() for c in credential) else credential


def one_authorization(values: Sequence[str]) -> str | None:
    """The request's one ``Authorization`` header value, None when it has none (the REST
    middleware and the WebSocket handshake pass every value they received). Raises
    :class:`~apportion.errors.Unauthorized` for two or more: which key would act is
    ambiguous, so none does."""
    if len(values) > 1:
        raise Unauthorized(
            f"this request carries {len(values)} Authorization headers; send exactly one: "
            f"{HOW_TO_AUTH}",
            details={"header": "Authorization", "count": len(values)},
        )
    return values[0] if values else None


async def authenticate(keys: KeyStore, header: str | None) -> Principal:
    """The principal of an ``Authorization`` header value (REST middleware, WebSocket
    handshake; Socket.IO passes ``f"Bearer {auth['token']}"``). Raises
    :class:`~apportion.errors.Unauthorized` saying what to send when missing or wrong."""
    if header is None or not header.strip():
        raise Unauthorized(f"this request carries no API key: {HOW_TO_AUTH}")
    secret = parse_authorization(header)
    if secret is None:
        raise Unauthorized(f"the Authorization header is not 'Bearer <key>': {HOW_TO_AUTH}")
    principal = await keys.verify(secret)
    if principal is None:
        raise Unauthorized(f"the API key is unknown, revoked or mistyped: {HOW_TO_AUTH}")
    return principal


def require(principal: Principal, needed: Scope) -> None:
    """Called by routes before acting; raises :class:`~apportion.errors.Forbidden` naming the
    needed scope and the key's scope when the key may not do this."""
    if not principal.scope.allows(needed):
        raise Forbidden(
            f"this needs a key with scope '{needed}' (or admin); key {principal.key_id!r} "
            f"({principal.name}) has scope '{principal.scope}'; "
            f"create one with `apportion keys create --scope {needed}`",
            details={"needed": needed.value, "scope": principal.scope.value},
        )


def check_bind_allowed(host: str, *, auth_enabled: bool) -> None:
    """Called by ``apportion serve`` before binding. Raises ``ValueError`` for a
    non-loopback ``host`` (anything but 127.0.0.0/8, ::1, localhost) when auth is off."""
    if auth_enabled or _is_loopback(host):
        return
    raise ValueError(
        f"refusing to listen on {host!r} with authentication disabled: anyone who can reach "
        "it could allocate GPUs and run jobs; keep auth on, or bind to 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def principal_of(request: web.Request) -> Principal:
    """The typed principal the middleware stored; raises Unauthorized on a public path."""
    try:
        return request[PRINCIPAL]
    except KeyError:
        raise Unauthorized(
            f"this route was reached without authentication: {HOW_TO_AUTH}"
        ) from None


def _error_response(exc: ApportionError) -> web.Response:
    response = web.Response(
        body=jsonutil.dumps(exc.envelope()),
        status=exc.http_status,
        content_type="application/json",
    )
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="apportion"'
    return response


def auth_middleware(
    keys: KeyStore,
    *,
    enabled: bool,
    public_paths: frozenset[str],
    public_prefixes: tuple[str, ...] = (),
) -> Middleware:
    """The aiohttp middleware of the HTTP port. Every request except ``public_paths``
    (e.g. ``/healthz``, ``/metrics``) must authenticate, else 401 with the JSON envelope and
    ``WWW-Authenticate: Bearer``. Sets the typed ``request[PRINCIPAL]`` (read it with
    :func:`principal_of`); when disabled the principal is an anonymous admin. A
    :class:`Forbidden` raised by a handler's :func:`require` becomes a 403 envelope."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not enabled:
            principal: Principal | None = ANONYMOUS_ADMIN
        elif request.path in public_paths or request.path.startswith(public_prefixes or ("\0",)):
            principal = None
        else:
            try:
                header = one_authorization(request.headers.getall("Authorization", []))
                principal = await authenticate(keys, header)
                mark_authenticated(request)  # its connection keeps its place (limits.py)
            except Unauthorized as exc:
                return _error_response(exc)
        if principal is not None:
            request[PRINCIPAL] = principal
        try:
            return await handler(request)
        except Forbidden as exc:
            return _error_response(exc)

    return middleware
