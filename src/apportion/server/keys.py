"""The API key store: issue, hash, verify (with a cache), list and revoke keys in ``api_keys``.

A key is ``apn_<id>_<secret>``: ``id`` (10 random lowercase letters and digits) finds the
row in O(1) through the indexed ``prefix`` column, ``secret`` is ``secrets.token_urlsafe(32)``
(256 random bits). The database keeps ``sha256$<salt>$<sha256(salt + key)>`` with a per-key
random salt, compared with :func:`hmac.compare_digest`. A slow KDF (scrypt, PBKDF2) would buy
nothing: it protects guessable passwords, and a 256-bit random key cannot be guessed however
fast the hash is, while every handshake pays the hash. Keys given by an operator
(``APPORTION_ADMIN_KEY``, ``--admin-key-file``) must be at least 16 printable characters; they
are found through a domain-separated hash tag in ``prefix`` and should be just as random.

Successful verifications are cached in memory (default 60 s, bounded LRU) and dropped on
:meth:`KeyStore.revoke`; a revoke made through another server sharing a PostgreSQL database
drops them here when its notice arrives (:meth:`KeyStore.follow`). Scopes and principals are defined in :mod:`apportion.server.auth`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apportion.errors import Conflict
from apportion.ownership import DEFAULT_ACCOUNT
from apportion.server.auth import Principal, Scope
from apportion.store.db import Database
from apportion.store.notices import Notice, NoticeFeed
from apportion.store.repos.api_keys import KEY_TOPIC, KeyRepo, KeyRow
from apportion.timefmt import iso_utc

KEY_PREFIX = "apn_"
ID_LENGTH = 10
MIN_GIVEN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 512
_ID_ALPHABET = string.ascii_lowercase + string.digits
_TAG_DOMAIN = b"apportion-key-lookup\x00"


@dataclass(frozen=True)
class IssuedKey:
    """A new key; ``secret`` is the full key string and is shown once, never stored."""

    key_id: str
    name: str
    scope: Scope
    account: str
    user: str
    secret: str


def _hash(secret: str, salt: bytes) -> str:
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def _matches(secret: str, stored: str) -> bool:
    try:
        algorithm, salt_hex, _digest = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    return algorithm == "sha256" and hmac.compare_digest(_hash(secret, salt), stored)


def _tag(secret: str) -> str:
    """The lookup prefix of an operator-given key: 16 chars, never the length of an id."""
    return "x" + hashlib.sha256(_TAG_DOMAIN + secret.encode()).hexdigest()[:15]


def _lookup_prefixes(secret: str) -> list[str]:
    prefixes = [_tag(secret)]
    if secret.startswith(KEY_PREFIX):
        key_id, sep, _rest = secret[len(KEY_PREFIX) :].partition("_")
        if sep and len(key_id) == ID_LENGTH:
            prefixes.append(key_id)
    return prefixes


class KeyStore:
    """API keys in the ``api_keys`` table (the ``scopes`` column holds the scope name).

    Built once by the app and shared by the REST middleware, the WebSocket handshake, the
    Socket.IO ``connect`` handler and the ``keys`` admin routes. ``clock`` is injectable so
    tests can move the cache's time.
    """

    def __init__(
        self,
        db: Database,
        *,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = KeyRepo(db)
        self._ttl = cache_ttl
        self._size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._revoke_lock = asyncio.Lock()

    async def _insert(
        self,
        name: str,
        scope: Scope,
        secret_for: Callable[[str], str],
        *,
        account: str = DEFAULT_ACCOUNT,
        user: str | None = None,
    ) -> IssuedKey:
        for _attempt in range(5):
            key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
            secret = secret_for(key_id)
            prefix = key_id if secret.startswith(f"{KEY_PREFIX}{key_id}_") else _tag(secret)
            row = KeyRow(
                id=key_id,
                name=name,
                prefix=prefix,
                hash=_hash(secret, secrets.token_bytes(16)),
                scopes=scope.value,
                created_at=time.time(),
                account=account,
                user_name=user or name,
            )
            if not await self._repo.insert(row):  # an id collision (1 in 36**10); draw again
                continue
            return IssuedKey(key_id, name, scope, row.account, row.user_name, secret)
        raise RuntimeError("could not draw a free API key id in 5 attempts")

    async def create(
        self,
        name: str,
        scope: Scope,
        *,
        account: str = DEFAULT_ACCOUNT,
        user: str | None = None,
    ) -> IssuedKey:
        """Issue a new random key (``apportion keys create``, ``POST /keys``, first start)
        acting for ``account`` (which the caller has checked exists) and naming ``user``
        (default: the key's name)."""
        if not name.strip():
            raise ValueError("a key needs a non-empty name saying who or what uses it")
        token = secrets.token_urlsafe(32)
        return await self._insert(
            name,
            scope,
            lambda key_id: f"{KEY_PREFIX}{key_id}_{token}",
            account=account,
            user=user,
        )

    async def _find(self, secret: str, *, active_only: bool) -> KeyRow | None:
        """The row whose hash matches ``secret`` (lowest id on a tie; only unrevoked ones with
        ``active_only``), or None."""
        rows = await self._repo.by_prefix(_lookup_prefixes(secret), active_only=active_only)
        return next((r for r in rows if _matches(secret, r.hash)), None)

    async def ensure_key(self, secret: str, *, name: str, scope: Scope) -> str:
        """Make an operator-given ``secret`` (``APPORTION_ADMIN_KEY``, ``--admin-key-file``) a
        valid key of ``scope``; called at every start, so the same secret keeps its row. A revoked
        row with this secret is re-activated: the flag states the operator's intent.
        Raises ``ValueError`` for a secret under 16 characters or with spaces/controls."""
        if len(secret) < MIN_GIVEN_KEY_LENGTH or len(secret) > MAX_KEY_LENGTH:
            raise ValueError(
                f"the admin key must be {MIN_GIVEN_KEY_LENGTH}–{MAX_KEY_LENGTH} characters "
                f"(got {len(secret)}); generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if not all(c in string.printable and not c.isspace() for c in secret):
            raise ValueError("the admin key may hold only printable ASCII without spaces")
        found = await self._find(secret, active_only=False)
        if found is None:
            return (await self._insert(name, scope, lambda _key_id: secret)).key_id
        await self._repo.reactivate(found.id, scope.value)
        self._forget(found.id)
        return found.id

    async def verify(self, secret: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else. Cheap: a cache
        hit is one SHA-256; a miss is one indexed query, one salted SHA-256 and a
        ``last_used_at`` write."""
        if not secret or len(secret) > MAX_KEY_LENGTH:
            return None
        cache_key = hashlib.sha256(secret.encode()).digest()
        now = self._clock()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(cache_key)
            return hit[0]
        self._cache.pop(cache_key, None)
        row = await self._find(secret, active_only=True)
        if row is None:
            return None
        principal = Principal(
            key_id=row.id,
            name=row.name,
            scope=Scope(row.scopes),
            account=row.account,
            user=row.user_name,
        )
        await self._repo.touch(row.id, time.time())
        self._cache[cache_key] = (principal, now + self._ttl)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return principal

    async def list(self) -> list[dict[str, Any]]:
        """Every key, oldest first, without hashes or secrets (``apportion keys list``)."""
        return [
            {
                "key_id": r.id,
                "name": r.name,
                "scope": r.scopes,
                "account": r.account,
                "user": r.user_name,
                "created_at": iso_utc(r.created_at),
                "last_used_at": iso_utc(r.last_used_at),
                "revoked_at": iso_utc(r.revoked_at),
                "revoked": r.revoked_at is not None,
            }
            for r in await self._repo.all()
        ]

    async def revoke(
        self,
        key_id: str,
        *,
        by: str | None = None,
        allow_self: bool = False,
        allow_last_admin: bool = False,
    ) -> bool:
        """Revoke a key now (``DELETE /keys/{key_id}``, ``apportion keys revoke``); False when
        no active key has that id. ``by`` is the key id of the caller. Raises
        :class:`~apportion.errors.Conflict` naming the flag when ``key_id`` is the caller's own
        key (unless ``allow_self``) or the last active admin key (unless ``allow_last_admin``):
        either would lock the caller, or every admin, out. Revokes run one at a time, so two
        concurrent revokes cannot each remove "one of two" admins."""
        async with self._revoke_lock:
            if key_id == by and not allow_self:
                raise Conflict(
                    f"key {key_id!r} is the key making this request; revoking it ends your own "
                    "access: pass allow_self=true (`apportion keys revoke --allow-self`)",
                    details={"key_id": key_id, "flag": "allow_self"},
                )
            rows = await self._repo.all()
            active_admins = {
                r.id for r in rows if r.revoked_at is None and r.scopes == Scope.ADMIN.value
            }
            if active_admins == {key_id} and not allow_last_admin:
                raise Conflict(
                    f"key {key_id!r} is the last active admin key; without it nobody can manage "
                    "keys: create another admin key first, or pass allow_last_admin=true "
                    "(`apportion keys revoke --allow-last-admin`)",
                    details={"key_id": key_id, "flag": "allow_last_admin"},
                )
            revoked = await self._repo.revoke(key_id, time.time())
            self._forget(key_id)
            return revoked

    async def has_admin(self) -> bool:
        """True when an active admin key exists (the first start generates one otherwise)."""
        return await self._repo.has_active(Scope.ADMIN.value)

    def follow(self, feed: NoticeFeed) -> None:
        """Forget what was cached of keys revoked or changed through the other servers
        sharing the database (their notices), before ``feed`` starts: such a key is refused
        or re-read at its next use, not at the end of the cache's lifetime."""
        feed.on(KEY_TOPIC, self._heard, self._forget_all)

    async def _heard(self, notice: Notice) -> None:
        for key_id in notice.words:
            self._forget(key_id)

    async def _forget_all(self) -> None:
        self._cache.clear()

    def _forget(self, key_id: str) -> None:
        for cache_key in [k for k, (p, _) in self._cache.items() if p.key_id == key_id]:
            del self._cache[cache_key]
