"""Accounts (``accounts``): the teams keys, jobs, holds and events belong to."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from apportion.store import notices, schema
from apportion.store.db import Database


@dataclass(frozen=True)
class AccountRow:
    """An ``accounts`` row; ``os_user`` None means the server's ``job_user``."""

    name: str
    os_user: str | None
    description: str
    created_at: float
    shares: int = 1


ACCOUNT_TOPIC = "account"
"""The notices of account changes (:mod:`apportion.store.notices`): ``put`` (made or changed),
followed by account names."""


class AccountRepo:
    """The account book's storage (:class:`~apportion.accounts.AccountBook`); each write is
    one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[AccountRow]:
        """Every account, by name."""
        query = select(schema.accounts).order_by(schema.accounts.c.name)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AccountRow(r.name, r.os_user, r.description, float(r.created_at), int(r.shares))
            for r in rows
        ]

    async def insert(self, row: AccountRow) -> bool:
        """Store a new account; False (nothing written) when the name is taken."""
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    schema.accounts.insert().values(
                        name=row.name,
                        os_user=row.os_user,
                        description=row.description,
                        created_at=row.created_at,
                        shares=row.shares,
                    )
                )
                await conn.run_sync(notices.send, ACCOUNT_TOPIC, "put", [row.name])
        except IntegrityError:
            return False
        return True

    async def set_shares(self, name: str, shares: int) -> None:
        """Change an account's fair-share shares."""
        accounts = schema.accounts
        async with self._db.write() as conn:
            await conn.execute(
                update(accounts).where(accounts.c.name == name).values(shares=shares)
            )
            await conn.run_sync(notices.send, ACCOUNT_TOPIC, "put", [name])
