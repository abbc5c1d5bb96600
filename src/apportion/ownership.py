"""Whose a record is, and who may see and change it: jobs, holds (allocations) and events.

One rule, used by the REST routes (``GET /jobs``, ``/jobs/{id}``…, ``/allocations``…, the
dashboard's job list), by :class:`~apportion.allocation.holds.HoldManager` (release, renew) and
by the event log's readers (``GET /events``, Socket.IO):

* a record belongs to an account (a team) and was made by a user of it (:class:`Owner`);
* a key sees the records of its own account; an ``operator`` or ``admin`` key sees every
  account's (:meth:`Actor.may_see`);
* a key changes the records its own user made in its own account; an ``admin`` key changes
  everything (:meth:`Actor.may_change`), as Slurm lets a user cancel their own jobs and an
  administrator anyone's;
* a record without an owner (made by the server itself) is seen by operators and admins and
  changed by admins only.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ACCOUNT = "default"
"""The account that always exists; keys, jobs and holds made before accounts existed are in it."""


@dataclass(frozen=True)
class Owner:
    """Whose a record is: the account it belongs to, the user who made it (a key's user
    name), and the id of the key it was made with (None when the server made it)."""

    account: str
    user: str | None
    key_id: str | None

    def public(self) -> dict[str, str | None]:
        """The owner as records show it: ``{"account", "user"}`` (never the key id)."""
        return {"account": self.account, "user": self.user}


@dataclass(frozen=True)
class Actor:
    """Who asks: the key's id, its account and user, and how far its scope reaches
    (``sees_all``: an operator or admin key; ``is_admin``: an admin key)."""

    key_id: str
    account: str
    user: str
    sees_all: bool
    is_admin: bool

    @property
    def owner(self) -> Owner:
        """The owner of what this actor makes."""
        return Owner(self.account, self.user, self.key_id)

    @property
    def only_account(self) -> str | None:
        """The one account whose work this actor sees, None when it sees every account (the
        filter of the event log's readers)."""
        return None if self.sees_all else self.account

    def may_see(self, owner: Owner | None) -> bool:
        """True when this actor may see a record owned by ``owner``."""
        return self.sees_all or (owner is not None and owner.account == self.account)

    def may_see_account(self, account: str | None) -> bool:
        """True when this actor may see what is about ``account`` (None: the whole fleet, such
        as a cluster's update, which every key sees)."""
        return account is None or self.sees_all or account == self.account

    def may_change(self, owner: Owner | None) -> bool:
        """True when this actor may change (cancel, release, renew…) a record owned by
        ``owner``."""
        if self.is_admin:
            return True
        return owner is not None and owner.account == self.account and owner.user == self.user
