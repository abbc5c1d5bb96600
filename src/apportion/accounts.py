"""Accounts: the teams that keys, jobs, holds and events belong to (docs/security.md).

An account has a name, an optional OS user its local jobs run as (``None``: the server's
``job_user``), a description and its fair-share shares (docs/scheduling.md). Every key acts for one account and names a user; what a key
may see and change follows from its account (:mod:`apportion.ownership`). The ``default``
account always exists: keys and jobs made before accounts existed were moved into it.

:class:`AccountBook` keeps every account in memory (the job identity asks it at every dispatch)
and writes through to the ``accounts`` table. Built once by the app; written by the
``/accounts`` routes only.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import time
from dataclasses import dataclass

from apportion.errors import Conflict, InvalidRequest, NotFound
from apportion.store.db import Database
from apportion.store.notices import Notice, NoticeFeed
from apportion.store.repos.accounts import ACCOUNT_TOPIC, AccountRepo, AccountRow
from apportion.timefmt import iso_utc

ACCOUNT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
"""An account's name: a lowercase letter, then up to 63 lowercase letters, digits, - or _."""


@dataclass(frozen=True)
class Account:
    """One account (an ``accounts`` row)."""

    name: str
    os_user: str | None
    description: str
    created_at: float
    shares: int = 1  # its fair-share weight (docs/scheduling.md)

    def public(self) -> dict[str, object]:
        """The account as ``GET /accounts`` shows it."""
        return {
            "name": self.name,
            "os_user": self.os_user,
            "description": self.description,
            "created_at": iso_utc(self.created_at),
            "shares": self.shares,
        }


def unknown_account(name: str) -> NotFound:
    """The answer for an account that does not exist, or that the asking key may not see."""
    return NotFound(
        f"no account {name!r}; list accounts with GET /accounts (`apportion accounts list`)",
        details={"account": name},
    )


def check_account_name(name: str, *, field: str) -> None:
    """Raise :class:`InvalidRequest` naming ``field`` (its wire path, e.g. ``body.name``)
    when ``name`` is no account name."""
    if not ACCOUNT_NAME.fullmatch(name):
        raise InvalidRequest(
            f"{field} {name!r} is not an account name: use a lowercase letter, then up to 63 "
            "lowercase letters, digits, '-' or '_'",
            path=field,
        )


def check_os_user(name: str) -> pwd.struct_passwd:
    """The password entry of an OS user that jobs may run as. Raises ``ValueError`` saying why
    when the user does not exist, is root, or is in group root (primary or supplementary)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"OS user {name!r} does not exist on this host") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ValueError(f"OS user {name!r} is root or in group root; jobs never run as root")
    if 0 in os.getgrouplist(entry.pw_name, entry.pw_gid):
        raise ValueError(f"OS user {name!r} is a member of group root; jobs never run as root")
    return entry


class AccountBook:
    """The accounts, in memory and in the store (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._repo = AccountRepo(db)
        self._accounts: dict[str, Account] = {}

    async def load(self) -> None:
        """Read every account (at start — the migration made ``default`` — and, with other
        servers sharing the database, when they change one)."""
        self._accounts = {
            r.name: Account(r.name, r.os_user, r.description, r.created_at, r.shares)
            for r in await self._repo.all()
        }

    def follow(self, feed: NoticeFeed) -> None:
        """Read the accounts again whenever one is made or changed through another server
        sharing the database (their notices), and on every reconnection; before ``feed``
        starts."""
        feed.on(ACCOUNT_TOPIC, self._heard, self.load)

    async def _heard(self, _notice: Notice) -> None:
        await self.load()

    def all(self) -> list[Account]:
        """Every account, by name."""
        return sorted(self._accounts.values(), key=lambda a: a.name)

    def get(self, name: str) -> Account:
        """The account ``name``; :class:`NotFound` naming how to list them otherwise."""
        try:
            return self._accounts[name]
        except KeyError:
            raise unknown_account(name) from None

    def exists(self, name: str) -> bool:
        return name in self._accounts

    def os_user_of(self, name: str) -> str | None:
        """The OS user account ``name``'s jobs run as; None when it names none (or does not
        exist): then the server's ``job_user``."""
        account = self._accounts.get(name)
        return None if account is None else account.os_user

    def shares(self) -> dict[str, int]:
        """Every account's fair-share shares, by name."""
        return {name: account.shares for name, account in self._accounts.items()}

    async def set_shares(self, name: str, shares: int) -> Account:
        """Change an account's fair-share shares (``PATCH /accounts/{name}``); return it."""
        account = dataclasses.replace(self.get(name), shares=shares)
        await self._repo.set_shares(name, shares)
        self._accounts[name] = account
        return account

    async def create(
        self, name: str, *, os_user: str | None, description: str, shares: int = 1
    ) -> Account:
        """Create an account (``POST /accounts``). Raises :class:`InvalidRequest` naming the
        field for a bad name or an ``os_user`` jobs cannot run as, :class:`Conflict` when the
        name is taken."""
        check_account_name(name, field="body.name")
        if os_user is not None:
            try:
                check_os_user(os_user)
            except ValueError as exc:
                raise InvalidRequest(
                    f"body.os_user: {exc}; create the user first (e.g. `useradd --system {os_user}`)"
                    " or leave os_user out to run this account's jobs as the server's job_user",
                    path="body.os_user",
                ) from None
        account = Account(name, os_user, description, time.time(), shares)
        if name in self._accounts or not await self._repo.insert(
            AccountRow(name, os_user, description, account.created_at, shares)
        ):
            raise Conflict(f"account {name!r} exists already", details={"account": name})
        self._accounts[name] = account
        return account
