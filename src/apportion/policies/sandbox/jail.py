"""The jail a sandbox worker runs in: Debian's ``bwrap`` (bubblewrap) and the sandbox user.

:func:`find_jail` is called once by the application at start (and by tests); it answers a
:class:`Jail` when ``bwrap`` exists, the sandbox user exists and a probe sandbox actually starts,
else raises :class:`JailUnavailable` saying what to install. :meth:`Jail.argv` is used by
:class:`~apportion.policies.sandbox.handle.WorkerHandle` to wrap the worker's command.

What a jailed worker gets (docs/security.md, "Policy sandbox"):

* new PID, network, IPC, UTS and cgroup namespaces (``--unshare-all`` less the user namespace:
  started by root, a user namespace would map the worker to uid 0 outside, so instead the worker
  drops to the real unprivileged uid/gid of :data:`SANDBOX_USER` itself, before any policy code
  is read — see ``worker.py``); no network at all (only a downed loopback); its own ``/proc``
  that shows only its own processes; ``--die-with-parent`` and ``--new-session``;
* a root that holds only ``/usr`` (and the ``/bin``, ``/lib``, ``/lib64`` links into it), the
  Python runtime (the interpreter's base prefix, the virtual environment, the directory that
  holds the ``apportion`` package) and the policy code roots, all read-only, a minimal ``/dev``,
  and a private tmpfs of ``tmp_mb`` on ``/tmp`` as its only writable place;
* all capabilities dropped except CAP_SETUID/CAP_SETGID, which the worker gives up (with the
  uid change) before it loads anything.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import apportion

logger = logging.getLogger("apportion.policies.sandbox.pool")

SANDBOX_USER = "apportion-sandbox"
INSTALL_HINT = (
    "install Debian's bubblewrap and create the sandbox user: run `bash scripts/sandbox_up.sh` "
    "as root (or `apt-get install bubblewrap` and `useradd --system apportion-sandbox`), or set "
    "APPORTION_UNSANDBOXED_POLICIES=true to run non-built-in policies without a sandbox"
)
_PROBE_SECONDS = 30.0
CGROUP_V1 = Path("/sys/fs/cgroup")
CGROUP_PARENT = "apportion-sandbox"
# Inside the jail: the worker writes "0" here (itself) before it drops root, so it and every
# process it or its policy starts count against its cgroups' limits.
JAIL_CGROUP_PROCS = {"memory": "/run/cgroup-memory.procs", "pids": "/run/cgroup-pids.procs"}
_CGROUP_NAMES = itertools.count()
_stale: list[Path] = []  # cgroups whose processes were still exiting when the worker was reaped
JAIL_TMP = "/tmp"  # noqa: S108 - inside the jail: its own private tmpfs, nobody else's


class JailUnavailable(Exception):
    """No sandbox can be built here; the message says why and what to install."""


class WorkerCgroups:
    """A worker's own cgroup v1 ``memory`` and ``pids`` groups: the memory and process caps of
    its whole process tree (rlimits are per process; these are not).

    Made by :class:`~apportion.policies.sandbox.handle.WorkerHandle` before it starts a jailed
    worker, :meth:`remove` d after it reaped it. Under ``/sys/fs/cgroup/{memory,pids}/
    apportion-sandbox/``; a group whose last processes were still exiting is removed later.
    """

    def __init__(self, memory_bytes: int, max_processes: int) -> None:
        name = f"{os.getpid()}-{next(_CGROUP_NAMES)}"
        self.memory = CGROUP_V1 / "memory" / CGROUP_PARENT / name
        self.pids = CGROUP_V1 / "pids" / CGROUP_PARENT / name
        _remove_stale()
        self.memory.mkdir(parents=True)
        self.pids.mkdir(parents=True)
        (self.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        swap = self.memory / "memory.memsw.limit_in_bytes"  # no swapping past the limit either
        if swap.exists():
            swap.write_text(str(memory_bytes))
        (self.pids / "pids.max").write_text(str(max_processes))

    def tasks(self) -> int:
        """How many tasks (processes and threads) are in the worker's ``pids`` group now."""
        try:
            return int((self.pids / "pids.current").read_text())
        except (OSError, ValueError):
            return 0

    def binds(self) -> list[str]:
        """The ``bwrap`` arguments that let the worker enter both groups."""
        return [
            *("--bind", str(self.memory / "cgroup.procs"), JAIL_CGROUP_PROCS["memory"]),
            *("--bind", str(self.pids / "cgroup.procs"), JAIL_CGROUP_PROCS["pids"]),
        ]

    def remove(self) -> None:
        """Remove both groups (later, if processes in them are still exiting)."""
        for group in (self.memory, self.pids):
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # EBUSY: the PID namespace is still being torn down
                _stale.append(group)


def _remove_stale() -> None:
    """Remove this server's groups left busy earlier, and those of servers that have ended."""
    for group in list(_stale):
        with contextlib.suppress(OSError):
            group.rmdir()
            _stale.remove(group)
    for controller in ("memory", "pids"):
        parent = CGROUP_V1 / controller / CGROUP_PARENT
        with contextlib.suppress(OSError):
            for group in parent.iterdir():
                owner = group.name.partition("-")[0]
                if group.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    with contextlib.suppress(OSError):
                        group.rmdir()


def cgroups_available() -> bool:
    """Whether this process may make cgroup v1 ``memory`` and ``pids`` groups (root, v1)."""
    for controller in ("memory", "pids"):
        parent = CGROUP_V1 / controller / CGROUP_PARENT
        try:
            parent.mkdir(exist_ok=True)
        except OSError:
            return False
        if not (parent / "cgroup.procs").exists():
            return False
    return True


@dataclass(frozen=True)
class Jail:
    """How to start a jailed worker: ``bwrap``, the sandbox uid/gid, what it may read, and
    whether each worker gets its own cgroups (else only rlimits cap it)."""

    bwrap: str
    uid: int
    gid: int
    read_only: tuple[Path, ...]
    cgroups: bool

    def argv(
        self, command: list[str], *, tmp_mb: int, cgroups: WorkerCgroups | None = None
    ) -> list[str]:
        """``command`` wrapped in ``bwrap`` (an argv list; the command's paths must be inside
        :attr:`read_only`), with ``cgroups``' files bound in when given."""
        argv = [self.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib64", "sbin"):
            if Path(f"/{link}").is_symlink():
                argv += ["--symlink", f"usr/{link}", f"/{link}"]
            elif Path(f"/{link}").is_dir():
                argv += ["--ro-bind", f"/{link}", f"/{link}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", str(tmp_mb * 2**20), "--tmpfs", JAIL_TMP]
        made: set[Path] = set()
        for path in self.read_only:
            for parent in reversed(path.parents):
                if parent != Path("/") and parent not in made and not _under_usr(parent):
                    made.add(parent)
                    argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind", str(path), str(path)]
        if cgroups is not None:
            argv += cgroups.binds()
        return [*argv, "--chdir", JAIL_TMP, "--", *command]


def _under_usr(path: Path) -> bool:
    return path == Path("/usr") or Path("/usr") in path.parents


def runtime_paths() -> tuple[Path, ...]:
    """The Python runtime a worker needs: base prefix, venv prefix, the ``apportion`` package's
    parent directory (an editable install or site-packages)."""
    package_parent = Path(apportion.__file__).resolve().parent.parent
    found = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package_parent]
    return _outermost(p for p in found if not _under_usr(p))


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Distinct paths, dropping any that lie inside another of them."""
    unique = sorted(set(paths))
    kept: list[Path] = []
    for path in unique:
        if not any(k == path or k in path.parents for k in kept):
            kept.append(path)
    return tuple(kept)


def find_jail(code_roots: tuple[Path, ...]) -> Jail:
    """A working jail that can read ``code_roots``; raises :class:`JailUnavailable`.

    Probes once: starts ``bwrap`` with the real arguments around ``python -c pass``, so a kernel
    that forbids namespaces (or a container without the privilege) is found at start.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise JailUnavailable(f"bwrap (bubblewrap) is not installed; {INSTALL_HINT}")
    try:
        user = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        raise JailUnavailable(f"the user {SANDBOX_USER} does not exist; {INSTALL_HINT}") from None
    for root in code_roots:  # the sandbox user must be able to enter (never to write) them
        root.mkdir(parents=True, exist_ok=True)
        mode = root.stat().st_mode
        if mode & 0o555 != 0o555:
            root.chmod(mode | 0o555)
    roots = [root.resolve() for root in code_roots]
    read_only = _outermost([*runtime_paths(), *roots])
    jail = Jail(bwrap, user.pw_uid, user.pw_gid, read_only, cgroups_available())
    command = [sys.executable, "-I", "-B", "-c", "pass"]
    try:
        probe = subprocess.run(  # noqa: S603 - fixed argv, no shell
            jail.argv(command, tmp_mb=1),
            capture_output=True,
            timeout=_PROBE_SECONDS,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JailUnavailable(f"bwrap could not be run ({exc}); {INSTALL_HINT}") from None
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace").strip()[:400]
        raise JailUnavailable(
            f"bwrap cannot create a sandbox here (exit {probe.returncode}: {said}); it needs to "
            f"run as root with namespaces allowed; {INSTALL_HINT}"
        )
    if not jail.cgroups:
        logger.warning(
            "cgroup v1 memory/pids groups cannot be made here: each sandbox worker's memory is "
            "capped per process (RLIMIT_AS) and its processes by RLIMIT_NPROC of %s only",
            SANDBOX_USER,
        )
    return jail
