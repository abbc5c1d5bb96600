"""API keys, scopes, header parsing, bind checks and the aiohttp middleware (real SQLite,
real aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from apportion.errors import Conflict, Forbidden, Unauthorized
from apportion.server.auth import (
    Principal,
    Scope,
    auth_middleware,
    authenticate,
    check_bind_allowed,
    parse_authorization,
    principal_of,
    require,
)
from apportion.server.keys import KeyStore
from apportion.store.db import Database
from apportion.store.schema import api_keys

KEY_SHAPE = re.compile(r"^apn_([a-z0-9]{10})_[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 43 chars
GIVEN = "operator-chosen-admin-key-0123456789"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{tmp_path}/t.db")
    yield database
    await database.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _rows(db: Database) -> list[dict[str, object]]:
    async with db.read() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(api_keys))]


# --- keys ------------------------------------------------------------------------------------


def principal(key_id: str, name: str, scope: Scope) -> Principal:
    """A key of the default account whose user is its name (what a key is by default)."""
    return Principal(key_id, name, scope, "default", name)


@pytest.mark.parametrize("scope", list(Scope))
async def test_create_then_verify_gives_the_scope(db: Database, scope: Scope) -> None:
    keys = KeyStore(db)
    issued = await keys.create("ci-runner", scope, account="team-a", user="ci")
    match = KEY_SHAPE.match(issued.secret)
    assert match is not None and match.group(1) == issued.key_id
    expected = Principal(issued.key_id, "ci-runner", scope, "team-a", "ci")
    assert await keys.verify(issued.secret) == expected
    # A fresh store (no cache) agrees: the answer comes from the database.
    assert await KeyStore(db).verify(issued.secret) == expected


async def test_wrong_secret_and_tampered_id_are_refused(db: Database) -> None:
    keys = KeyStore(db)
    one = await keys.create("one", Scope.ADMIN)
    two = await keys.create("two", Scope.READ)
    last = one.secret[-1]
    wrong_tail = one.secret[:-1] + ("A" if last != "A" else "B")
    assert await keys.verify(wrong_tail) is None
    # Key one's secret part under key two's id: the id finds a row, the hash refuses it.
    tail_of_one = one.secret.split("_", 2)[2]
    assert await keys.verify(f"apn_{two.key_id}_{tail_of_one}") is None
    assert await keys.verify(f"apn_zzzzzzzzzz_{tail_of_one}") is None
    assert await keys.verify("") is None
    assert await keys.verify("x" * 10_000) is None
    # The real keys still work after the failed attempts.
    assert (await keys.verify(two.secret)) == Principal(
        two.key_id, "two", Scope.READ, "default", "two"
    )


async def test_revoked_key_is_refused_even_when_cached(db: Database) -> None:
    keys = KeyStore(db)
    issued = await keys.create("temp", Scope.SUBMIT)
    assert await keys.verify(issued.secret) is not None  # now cached
    assert await keys.revoke(issued.key_id) is True
    assert await keys.verify(issued.secret) is None
    assert await keys.revoke(issued.key_id) is False  # already revoked
    assert await keys.revoke("nosuchkey0") is False


async def test_cache_serves_until_ttl_then_sees_a_revoke_from_elsewhere(db: Database) -> None:
    clock = FakeClock()
    cached = KeyStore(db, cache_ttl=60.0, clock=clock)
    other = KeyStore(db)  # another process, say: its revoke cannot reach our cache
    issued = await cached.create("svc", Scope.READ)
    assert await cached.verify(issued.secret) is not None
    assert await other.revoke(issued.key_id) is True
    clock.now += 59.0  # 59 s < 60 s TTL: still the cached answer
    assert await cached.verify(issued.secret) is not None
    clock.now += 2.0  # 61 s > 60 s: expired, the database says revoked
    assert await cached.verify(issued.secret) is None


async def test_cache_is_bounded_lru(db: Database) -> None:
    keys = KeyStore(db, cache_size=2, clock=FakeClock())
    other = KeyStore(db)
    a, b, c = [await keys.create(n, Scope.READ) for n in "abc"]
    for issued in (a, b, c):  # a is evicted when c enters (size 2)
        assert await keys.verify(issued.secret) is not None
    for issued in (a, c):
        await other.revoke(issued.key_id)
    assert await keys.verify(a.secret) is None  # evicted: read from the database
    assert await keys.verify(c.secret) is not None  # still cached


async def test_ensure_key_is_idempotent_across_restarts(db: Database, tmp_path: Path) -> None:
    keys = KeyStore(db)
    first = await keys.ensure_key(GIVEN, name="admin (flag)", scope=Scope.ADMIN)
    second = await keys.ensure_key(GIVEN, name="admin (flag)", scope=Scope.ADMIN)
    assert first == second
    assert len(await _rows(db)) == 1
    await db.close()
    reopened = await Database.open(f"sqlite:///{tmp_path}/t.db")
    try:
        again = KeyStore(reopened)
        assert await again.ensure_key(GIVEN, name="admin (flag)", scope=Scope.ADMIN) == first
        assert len(await _rows(reopened)) == 1
        assert await again.verify(GIVEN) == principal(first, "admin (flag)", Scope.ADMIN)
        assert await again.verify(GIVEN + "x") is None
    finally:
        await reopened.close()


async def test_ensure_key_reactivates_and_rescopes(db: Database) -> None:
    keys = KeyStore(db)
    key_id = await keys.ensure_key(GIVEN, name="auto", scope=Scope.READ)
    assert (await keys.verify(GIVEN)) == principal(key_id, "auto", Scope.READ)
    await keys.revoke(key_id)
    assert await keys.ensure_key(GIVEN, name="auto", scope=Scope.ADMIN) == key_id
    assert (await keys.verify(GIVEN)) == principal(key_id, "auto", Scope.ADMIN)


async def test_ensure_key_accepts_an_issued_key_without_a_second_row(db: Database) -> None:
    keys = KeyStore(db)
    issued = await keys.create("made by cli", Scope.READ)
    assert await keys.ensure_key(issued.secret, name="flag", scope=Scope.ADMIN) == issued.key_id
    assert len(await _rows(db)) == 1
    assert (await keys.verify(issued.secret)) == principal(
        issued.key_id, "made by cli", Scope.ADMIN
    )


@pytest.mark.parametrize(
    "bad",
    ["k" * 15, "has a space in the middle", "tab\there-0123456789"],  # 15 < 16 chars; spaces
)
async def test_ensure_key_refuses_weak_or_odd_secrets(db: Database, bad: str) -> None:
    with pytest.raises(ValueError, match="admin key"):
        await KeyStore(db).ensure_key(bad, name="x", scope=Scope.ADMIN)
    assert await _rows(db) == []


async def test_list_has_no_secret_or_hash(db: Database) -> None:
    keys = KeyStore(db)
    made = [await keys.create("alpha", Scope.READ), await keys.create("beta", Scope.ADMIN)]
    await keys.revoke(made[0].key_id)
    stored = {r["id"]: r["hash"] for r in await _rows(db)}
    listed = await keys.list()
    assert {k["key_id"] for k in listed} == {m.key_id for m in made}
    assert {k["key_id"]: k["revoked"] for k in listed} == {
        made[0].key_id: True,
        made[1].key_id: False,
    }
    text = repr(listed)
    for m in made:
        assert m.secret not in text
        assert m.secret.split("_", 2)[2] not in text
        assert str(stored[m.key_id]) not in text
    assert all("hash" not in k and "secret" not in k for k in listed)
    assert listed[0]["created_at"].endswith("+00:00")  # ISO-8601 UTC


async def test_database_holds_a_salted_hash_not_the_secret(db: Database) -> None:
    keys = KeyStore(db)
    one = await keys.create("one", Scope.READ)
    await keys.ensure_key(GIVEN, name="given", scope=Scope.ADMIN)
    rows = await _rows(db)
    assert len(rows) == 2
    for row, secret in zip(
        sorted(rows, key=lambda r: r["name"] != "one"), [one.secret, GIVEN], strict=True
    ):
        stored = str(row["hash"])
        assert secret not in stored and secret.split("_")[-1] not in stored
        assert hashlib.sha256(secret.encode()).hexdigest() not in stored  # salted, not bare
        algorithm, salt, digest = stored.split("$")
        assert algorithm == "sha256" and len(salt) == 32 and len(digest) == 64
        assert all(secret not in str(value) for value in row.values())


async def test_has_admin_follows_admin_keys(db: Database) -> None:
    keys = KeyStore(db)
    assert await keys.has_admin() is False
    await keys.create("reader", Scope.READ)
    assert await keys.has_admin() is False
    admin = await keys.create("root", Scope.ADMIN)
    assert await keys.has_admin() is True
    await keys.revoke(admin.key_id, allow_last_admin=True)
    assert await keys.has_admin() is False


# --- scopes, headers, authenticate, require ----------------------------------------------------

# read < submit < admin: a key allows what is at or below its rank (3 x 3 = 9 pairs).
# Every scope reads; submit, policies and operator each add one thing; admin does everything.
_ALLOWED = {
    Scope.READ: {Scope.READ},
    Scope.SUBMIT: {Scope.READ, Scope.SUBMIT},
    Scope.POLICIES: {Scope.READ, Scope.POLICIES},
    Scope.OPERATOR: {Scope.READ, Scope.OPERATOR},
    Scope.ADMIN: set(Scope),
}
SCOPE_TABLE = [(have, needed, needed in _ALLOWED[have]) for have in Scope for needed in Scope]


@pytest.mark.parametrize(("have", "needed", "allowed"), SCOPE_TABLE)
def test_what_each_scope_allows(have: Scope, needed: Scope, allowed: bool) -> None:
    assert have.allows(needed) is allowed
    principal = Principal("k1", "someone", have, "default", "someone")
    if allowed:
        require(principal, needed)
    else:
        with pytest.raises(Forbidden) as caught:
            require(principal, needed)
        assert f"'{needed}'" in caught.value.message and f"'{have}'" in caught.value.message
        assert caught.value.details == {"needed": needed.value, "scope": have.value}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc123", "abc123"),
        ("bearer abc123", "abc123"),
        ("BEARER   abc123  ", "abc123"),
        ("Token abc123", "abc123"),
        ("token abc123", "abc123"),
        ("Basic dXNlcjpwYXNz", None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc123", None),
        ("Bearer two words", None),
        (None, None),
    ],
)
def test_parse_authorization(header: str | None, expected: str | None) -> None:
    assert parse_authorization(header) == expected


async def test_authenticate_says_what_to_send(db: Database) -> None:
    keys = KeyStore(db)
    issued = await keys.create("cli", Scope.SUBMIT)
    for header in (None, "", "Basic abc", f"Bearer {issued.secret}x"):
        with pytest.raises(Unauthorized) as caught:
            await authenticate(keys, header)
        assert "Authorization: Bearer <key>" in caught.value.message
        assert "apportion keys create" in caught.value.message
    for scheme in ("Bearer", "Token"):
        principal = await authenticate(keys, f"{scheme} {issued.secret}")
        assert principal.key_id == issued.key_id and principal.scope is Scope.SUBMIT


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),  # all of 127.0.0.0/8
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_check_bind_allowed(host: str, loopback: bool) -> None:
    check_bind_allowed(host, auth_enabled=True)  # with auth, any address
    if loopback:
        check_bind_allowed(host, auth_enabled=False)
    else:
        with pytest.raises(ValueError, match="authentication disabled"):
            check_bind_allowed(host, auth_enabled=False)


# --- the middleware on a real server -----------------------------------------------------------


async def _whoami(request: web.Request) -> web.Response:
    require(principal_of(request), Scope.READ)
    principal = principal_of(request)
    return web.json_response({"key_id": principal.key_id, "scope": principal.scope.value})


async def _admin_only(request: web.Request) -> web.Response:
    require(principal_of(request), Scope.ADMIN)
    return web.json_response({"done": True})


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _app(keys: KeyStore, *, enabled: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[auth_middleware(keys, enabled=enabled, public_paths=frozenset({"/healthz"}))]
    )
    app.router.add_get("/whoami", _whoami)
    app.router.add_post("/admin", _admin_only)
    app.router.add_get("/healthz", _healthz)
    return app


async def test_middleware_on_a_real_server(db: Database) -> None:
    keys = KeyStore(db)
    reader = await keys.create("reader", Scope.READ)
    admin = await keys.create("admin", Scope.ADMIN)
    async with TestServer(_app(keys), host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/whoami")) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
            assert body["success"] is False
            assert body["error"] == {"code": "Unauthorized", "details": {}}
            assert "Authorization: Bearer <key>" in body["message"]
        bad = {"Authorization": f"Bearer {reader.secret}0"}
        async with http.get(server.make_url("/whoami"), headers=bad) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "Unauthorized"
        for scheme in ("Bearer", "Token"):
            good = {"Authorization": f"{scheme} {reader.secret}"}
            async with http.get(server.make_url("/whoami"), headers=good) as resp:
                assert resp.status == 200
                assert await resp.json() == {"key_id": reader.key_id, "scope": "read"}
        async with http.get(server.make_url("/healthz")) as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True}
        forbidden = {"Authorization": f"Bearer {reader.secret}"}
        async with http.post(server.make_url("/admin"), headers=forbidden) as resp:
            assert resp.status == 403
            body = await resp.json()
            assert body["success"] is False and body["error"]["code"] == "Forbidden"
            assert "'admin'" in body["message"] and "'read'" in body["message"]
        allowed = {"Authorization": f"Bearer {admin.secret}"}
        async with http.post(server.make_url("/admin"), headers=allowed) as resp:
            assert resp.status == 200 and await resp.json() == {"done": True}
        await keys.revoke(admin.key_id, allow_last_admin=True)
        async with http.post(server.make_url("/admin"), headers=allowed) as resp:
            assert resp.status == 401


async def test_middleware_disabled_makes_an_anonymous_admin(db: Database) -> None:
    keys = KeyStore(db)
    async with (
        TestServer(_app(keys, enabled=False), host="127.0.0.1") as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(server.make_url("/whoami")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"key_id": "anonymous", "scope": "admin"}
        async with http.post(server.make_url("/admin")) as resp:
            assert resp.status == 200


# --- revoking the last admin key, or one's own key, takes an explicit flag --------------------


async def test_revoking_ones_own_or_the_last_admin_key_needs_its_flag(db: Database) -> None:
    keys = KeyStore(db)
    first = await keys.create("first admin", Scope.ADMIN)
    second = await keys.create("second admin", Scope.ADMIN)
    with pytest.raises(Conflict) as own:
        await keys.revoke(first.key_id, by=first.key_id)
    assert own.value.details["flag"] == "allow_self" and "allow_self" in own.value.message
    assert await keys.revoke(second.key_id, by=first.key_id) is True  # another, not the last
    with pytest.raises(Conflict) as last:
        await keys.revoke(first.key_id, by="someone-else")
    assert last.value.details["flag"] == "allow_last_admin"
    assert "--allow-last-admin" in last.value.message
    assert await keys.has_admin() is True  # refused: nothing was revoked
    assert await keys.revoke(first.key_id, by=first.key_id, allow_self=True, allow_last_admin=True)
    assert await keys.has_admin() is False


async def test_the_rest_route_takes_the_flags_as_query_fields(tmp_path: Path) -> None:
    from tests.conftest import running_server

    async with running_server(tmp_path / "data") as live:
        async with live.http.get(f"{live.url}/auth/whoami") as response:
            own_id = (await response.json())["key_id"]
        url = f"{live.url}/keys/{own_id}"
        async with live.http.delete(url) as response:
            body = await response.json()
            assert response.status == 409, body
        assert body["error"]["details"]["flag"] == "allow_self"
        async with live.http.delete(url, params={"allow_self": "true"}) as response:
            body = await response.json()
            assert response.status == 409, body  # it is also the last active admin key
        assert body["error"]["details"]["flag"] == "allow_last_admin"
        flags = {"allow_self": "true", "allow_last_admin": "true"}
        async with live.http.delete(url, params=flags) as response:
            assert response.status == 200, await response.text()
        async with live.http.get(f"{live.url}/keys") as response:
            assert response.status == 401  # the key revoked itself, as it asked
