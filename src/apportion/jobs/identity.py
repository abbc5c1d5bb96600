"""As which OS user a job runs: the one place that answers it (docs/security.md).

Built once by :mod:`apportion.app` from the settings; asked by
:meth:`~apportion.jobs.service.JobService.submit` (may this job run at all?) and by
:meth:`~apportion.jobs.driver.BackendDriver.spec` (the :class:`RunAs` the adapter switches to).
Today every job runs as the one configured ``job_user``; per-account users replace
:meth:`JobIdentity.run_as` and nothing else.

The three modes, fixed at start:

* the server is root: every job runs as ``job_user`` (its uid, its groups, its home); a
  missing user refuses jobs at submit, naming the set-up script that creates it;
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
from dataclasses import dataclass
from pathlib import Path

from apportion.adapters.base import AdapterError, RunAs
from apportion.jobs.records import Job

SETUP_HINT = "create it with scripts/tenant_user.sh (as root), or set job_user to an existing user"


@dataclass(frozen=True)
class JobIdentity:
    """The answer to "as whom does this job run?" (see the module docstring)."""

    job_user: str
    server_is_root: bool
    allow_as_server: bool

    @classmethod
    def of_this_process(cls, job_user: str, *, allow_as_server: bool) -> JobIdentity:
        return cls(job_user, os.geteuid() == 0, allow_as_server)

    def refusal(self) -> str | None:
        """Why no local job can run on this server now, in words for the submitter; or None."""
        if self.server_is_root:
            try:
                self._resolve()
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
        """The OS user ``job`` runs as (``None``: as the server, only when the operator opted in
        and the server is not root). Raises :class:`AdapterError` when ``job_user`` is missing,
        is root, or may not run jobs. Every job gets ``job_user`` today; accounts will answer
        from ``job.owner`` here."""
        del job  # one user for every job until accounts exist
        return self._resolve()

    def _resolve(self) -> RunAs | None:
        if not self.server_is_root:
            if self.allow_as_server:
                return None
            raise AdapterError(self.refusal() or "local jobs are refused on this server")
        try:
            entry = pwd.getpwnam(self.job_user)
        except KeyError:
            raise AdapterError(
                f"job_user {self.job_user!r} does not exist on this host: {SETUP_HINT}"
            ) from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise AdapterError(
                f"job_user {self.job_user!r} is root or in group root; jobs never run as the"
                f" server: {SETUP_HINT}"
            )
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        if 0 in groups:
            raise AdapterError(
                f"job_user {self.job_user!r} is a member of group root: {SETUP_HINT}"
            )
        return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    def describe(self) -> str:
        """The start-up line that says as whom jobs run."""
        if self.server_is_root:
            refusal = self.refusal()
            if refusal is not None:
                return f"local jobs are refused: {refusal}"
            return f"jobs run as OS user {self.job_user!r}, never as the server (root)"
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
