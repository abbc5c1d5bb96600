"""API keys (``api_keys``): hashed keys, found by their indexed lookup prefix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.exc import IntegrityError

from apportion.store import notices
from apportion.store.db import Database
from apportion.store.schema import api_keys

KEY_TOPIC = "key"
"""The notices of key changes (:mod:`apportion.store.notices`): ``revoke`` and ``change`` (a
new scope), each followed by key ids: other servers drop what they cached of those keys."""


@dataclass(frozen=True)
class KeyRow:
    """An ``api_keys`` row; ``scopes`` holds the scope's name, ``hash`` the salted digest,
    ``account`` the account the key acts for and ``user_name`` the user it names."""

    id: str
    name: str
    prefix: str
    hash: str
    scopes: str
    created_at: float
    account: str
    user_name: str
    revoked_at: float | None = None
    last_used_at: float | None = None


def _row(r: Row[Any]) -> KeyRow:
    return KeyRow(**r._mapping)


class KeyRepo:
    """The key store's storage (:class:`~apportion.server.keys.KeyStore`); each write is one
    transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, row: KeyRow) -> bool:
        """Store a new key; False (nothing written) when its id is taken."""
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    api_keys.insert().values(
                        id=row.id,
                        name=row.name,
                        prefix=row.prefix,
                        hash=row.hash,
                        scopes=row.scopes,
                        created_at=row.created_at,
                        account=row.account,
                        user_name=row.user_name,
                        revoked_at=row.revoked_at,
                        last_used_at=row.last_used_at,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def by_prefix(self, prefixes: Sequence[str], *, active_only: bool) -> list[KeyRow]:
        """The keys with one of ``prefixes``, by id (only unrevoked ones with ``active_only``)."""
        query = select(api_keys).where(api_keys.c.prefix.in_(list(prefixes)))
        if active_only:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self._db.read() as conn:
            return [_row(r) for r in await conn.execute(query.order_by(api_keys.c.id))]

    async def all(self) -> list[KeyRow]:
        """Every key, oldest first."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        async with self._db.read() as conn:
            return [_row(r) for r in await conn.execute(query)]

    async def reactivate(self, key_id: str, scopes: str) -> None:
        """Give the key ``scopes`` and clear its revocation."""
        async with self._db.write() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(scopes=scopes, revoked_at=None)
            )
            await conn.run_sync(notices.send, KEY_TOPIC, "change", [key_id])

    async def touch(self, key_id: str, when: float) -> None:
        """Record the key's last use."""
        async with self._db.write() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when)
            )

    async def revoke(self, key_id: str, when: float) -> bool:
        """Revoke an active key; False when no active key has that id."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .where(api_keys.c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
            await conn.run_sync(notices.send, KEY_TOPIC, "revoke", [key_id])
        return bool(result.rowcount)

    async def has_active(self, scopes: str) -> bool:
        """True when an unrevoked key of ``scopes`` exists."""
        query = (
            select(api_keys.c.id)
            .where(api_keys.c.scopes == scopes)
            .where(api_keys.c.revoked_at.is_(None))
            .limit(1)
        )
        async with self._db.read() as conn:
            return (await conn.execute(query)).first() is not None
