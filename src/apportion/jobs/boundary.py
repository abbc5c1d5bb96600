"""What a job may ask for at submit: its working directory, its environment, its identity.

:meth:`~apportion.jobs.service.JobService.submit` calls :meth:`JobBoundary.check` for every job
before it is committed, so a job that could escape its tenant is refused with a 400 naming the
field (or a 409 when this server cannot run jobs at all), never started (docs/security.md):

1. **Identity.** :class:`~apportion.jobs.identity.JobIdentity` must be able to say as whom the
   job runs (a root server with its account's user or the job user, or a non-root one that
   opted in).
2. **Working directory.** ``config.working_dir`` must not name ``/proc``, ``/sys`` or ``/dev``
   (before anything is resolved: ``/proc/<pid>/cwd`` would resolve to another process's
   directory) and, after resolving symlinks and ``..``, must lie under an allowed root — the
   queue's ``working_dir``, or the jobs root — and never at or under the data dir or the
   credentials directory, nor be ``/``. A root that is one of those is no root. A refusal says
   what was asked and the allowed roots, never what the path resolved to (that would tell a
   tenant about directories it cannot read). Without ``working_dir`` the job gets
   ``<jobs root>/<job id>``.
3. **Environment.** Names are POSIX names (checked by the model); loader and interpreter
   injection variables (:func:`~apportion.jobs.models.is_injection_variable`) need the queue's
   ``allowed_env``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from apportion.errors import Conflict, InvalidRequest
from apportion.jobs.identity import JobIdentity
from apportion.jobs.models import JobConfig, QueueConfig, is_injection_variable

ALWAYS_REFUSED = (Path("/proc"), Path("/sys"), Path("/dev"))


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class JobBoundary:
    """The submit-time rules of one server (its identity, jobs root and private directories)."""

    identity: JobIdentity
    jobs_root: Path
    private_dirs: tuple[Path, ...]  # the data dir, the credentials directory
    # the server's own directories under the jobs root (the local executor's with PostgreSQL):
    # refused as working directories, without making the jobs root, which holds them, no root
    private_in_root: tuple[Path, ...] = ()

    def check(self, config: JobConfig, queue: QueueConfig, account: str) -> None:
        """Refuse ``config`` of ``account`` in ``queue`` unless it stays inside the boundary
        (module docstring).

        Raises :class:`Conflict` when this server runs no jobs (of ``account``),
        :class:`InvalidRequest` naming ``body.config.working_dir`` or ``body.config.env``
        otherwise."""
        refusal = self.identity.refusal(account)
        if refusal is not None:
            raise Conflict(f"this job cannot run: {refusal}")
        if config.working_dir is not None:
            self._check_working_dir(config.working_dir, queue)
        allowed = set(queue.allowed_env)
        for name in sorted(config.env):
            if is_injection_variable(name) and name not in allowed:
                raise InvalidRequest(
                    f"config.env.{name} is a loader or interpreter injection variable and is"
                    f" refused: queue {queue.name!r} does not list it in allowed_env (an admin"
                    " may add it there; see docs/security.md)",
                    path=f"body.config.env.{name}",
                )

    def _forbidden(self) -> list[Path]:
        return [*ALWAYS_REFUSED, *(_real(p) for p in self.private_dirs)]

    def _roots(self, queue: QueueConfig) -> list[Path]:
        candidates = [self.jobs_root] + ([Path(queue.working_dir)] if queue.working_dir else [])
        roots = []
        for root in map(_real, candidates):
            if root == Path("/") or any(
                _within(root, f) or _within(f, root) for f in self._forbidden()
            ):
                continue  # a root that holds (or is inside) a private directory is no root
            roots.append(root)
        return roots

    def _check_working_dir(self, asked: str, queue: QueueConfig) -> None:
        roots = self._roots(queue)
        lexical = Path(os.path.normpath(asked))
        try:
            real = None if _under_system_dir(lexical) else _real(asked)
        except OSError:  # a path the server cannot resolve (e.g. another process's /proc entry)
            real = None
        if (
            real is None
            or real == Path("/")
            or any(
                _within(real, f) for f in [*self._forbidden(), *map(_real, self.private_in_root)]
            )
            or not any(_within(real, r) for r in roots)
        ):
            if asked == queue.working_dir:  # the queue's own, given to a job that named none
                raise InvalidRequest(
                    f"queue {queue.name!r} runs its jobs in its working_dir {asked}, which is"
                    " no allowed root (a system or private directory, or one holding it); ask"
                    " an admin to change it, or give config.working_dir under the jobs root",
                    path="body.config.working_dir",
                )
            where = (
                ", ".join(str(r) for r in roots)
                or "none: ask an admin to set the queue's working_dir"
            )
            instead = "the queue's working_dir" if queue.working_dir else "the job's own directory"
            raise InvalidRequest(
                f"config.working_dir {asked} is not a directory under an allowed root of queue"
                f" {queue.name!r} ({where}); use one, or leave working_dir out for {instead}",
                path="body.config.working_dir",
            )


def _under_system_dir(path: Path) -> bool:
    return any(_within(path, system) for system in ALWAYS_REFUSED)


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
