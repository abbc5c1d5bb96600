"""As which OS user a job runs: the one place that answers it (docs/security.md).

Built once by :mod:`apportion.app` from the settings and the accounts; asked by
:meth:`~apportion.jobs.service.JobService.submit` (may this job run at all?) and by
:meth:`~apportion.jobs.driver.BackendDriver.spec` (the :class:`RunAs` the adapter switches to).

The three modes, fixed at start:

* the server is root: a job runs as its account's ``os_user`` (``POST /accounts``), or as
  ``job_user`` when its account names none (its uid, its groups, its home); a missing user
  refuses the account's jobs at submit, naming the set-up script that creates it;
* the server is not root and ``allow_jobs_as_server_user`` is set: jobs run as the server's
  own user (``run_as`` is ``None``), and the server says so at start;
* the server is not root and did not opt in: local jobs are refused at submit.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apportion.accounts import check_os_user
from apportion.adapters.base import AdapterError, RunAs
from apportion.jobs.records import Job


def _no_account_users(_account: str) -> str | None:
    return None


LOOKUP_TTL = 1.0
"""Seconds a user's entry (uid, gid, groups, home) is used without asking the user database
again: every job dispatched in a burst asked it three times (a read of ``/etc/passwd`` and
``/etc/group`` each); a change there shows within this time."""

SETUP_HINT = (
    "create it with scripts/tenant_user.sh (as root), or set job_user (or the account's"
    " os_user) to an existing user"
)


@dataclass(frozen=True)
class JobIdentity:
    """The answer to "as whom does this job run?" (see the module docstring)."""

    job_user: str
    server_is_root: bool
    allow_as_server: bool
    os_user_of: Callable[[str], str | None] = _no_account_users
    """An account's own OS user, None when it has none (then ``job_user``)."""
    _looked_up: dict[str, tuple[float, RunAs]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """User name → (when, what) the user database said of it, for :data:`LOOKUP_TTL`."""

    @classmethod
    def of_this_process(
        cls,
        job_user: str,
        *,
        allow_as_server: bool,
        os_user_of: Callable[[str], str | None] = _no_account_users,
    ) -> JobIdentity:
        return cls(job_user, os.geteuid() == 0, allow_as_server, os_user_of)

    def refusal(self, account: str | None = None) -> str | None:
        """Why no local job (of ``account``; None: of an account without its own OS user) can
        run on this server now, in words for the submitter; or None."""
        if self.server_is_root:
            try:
                self._resolve(self._user_of(account))
            except AdapterError as exc:
                return exc.message
            return None
        if self.allow_as_server:
            return None
        return (
            "this server is not root, so it cannot run local jobs as another user, and it refuses"
            " to run them as itself; an operator may set allow_jobs_as_server_user (see"
            " docs/security.md), or run the server as root"
        )

    def run_as(self, job: Job) -> RunAs | None:
        """The OS user ``job`` runs as: its account's ``os_user``, else ``job_user``
        (``None``: as the server, only when the operator opted in and the server is not root).
        Raises :class:`AdapterError` when that user is missing, is root, or may not run
        jobs."""
        return self._resolve(self._user_of(job.owner.account))

    def _user_of(self, account: str | None) -> str:
        own = None if account is None else self.os_user_of(account)
        return own or self.job_user

    def _resolve(self, user: str) -> RunAs | None:
        if not self.server_is_root:
            if self.allow_as_server:
                return None
            raise AdapterError(self.refusal() or "local jobs are refused on this server")
        now = time.monotonic()
        known = self._looked_up.get(user)
        if known is not None and now - known[0] < LOOKUP_TTL:
            return known[1]
        try:
            entry = check_os_user(user)
        except ValueError as exc:
            raise AdapterError(f"jobs cannot run as {user!r}: {exc}: {SETUP_HINT}") from None
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        run_as = RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
        self._looked_up[user] = (now, run_as)
        return run_as

    def describe(self) -> str:
        """The start-up line that says as whom jobs run."""
        if self.server_is_root:
            refusal = self.refusal()
            if refusal is not None:
                return f"local jobs are refused: {refusal}"
            return (
                f"jobs run as their account's OS user, else as {self.job_user!r}; never as the"
                " server (root)"
            )
        if self.allow_as_server:
            user = pwd.getpwuid(os.geteuid()).pw_name
            return (
                f"jobs run as the server's own user {user!r} (allow_jobs_as_server_user is set):"
                " a job can read everything this server can"
            )
        return f"local jobs are refused: {self.refusal()}"


def python_for_jobs() -> str:
    """A Python interpreter that any job user can run: this process's own when every directory
    above it and the file itself are open to others (``o+x``), else the first ``python3`` on the
    system's default path (``/bin:/usr/bin``), else this process's own anyway. For the demo's
    jobs and the tests' (an interpreter under ``/root``, as pyenv installs it, is root's alone)."""
    own = Path(os.path.realpath(sys.executable))
    if all(p.stat().st_mode & stat.S_IXOTH for p in (own, *own.parents)):
        return sys.executable
    return shutil.which("python3", path=os.defpath) or sys.executable
