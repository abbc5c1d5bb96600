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

import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import apportion

SANDBOX_USER = "apportion-sandbox"
INSTALL_HINT = (
    "install Debian's bubblewrap and create the sandbox user: run `bash scripts/sandbox_up.sh` "
    "as root (or `apt-get install bubblewrap` and `useradd --system apportion-sandbox`), or set "
    "APPORTION_UNSANDBOXED_POLICIES=true to run non-built-in policies without a sandbox"
)
_PROBE_SECONDS = 30.0
JAIL_TMP = "/tmp"  # noqa: S108 - inside the jail: its own private tmpfs, nobody else's


class JailUnavailable(Exception):
    """No sandbox can be built here; the message says why and what to install."""


@dataclass(frozen=True)
class Jail:
    """How to start a jailed worker: ``bwrap``, the sandbox uid/gid and what it may read."""

    bwrap: str
    uid: int
    gid: int
    read_only: tuple[Path, ...]

    def argv(self, command: list[str], *, tmp_mb: int) -> list[str]:
        """``command`` wrapped in ``bwrap`` (an argv list; the command's paths must be inside
        :attr:`read_only`)."""
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
    for root in code_roots:
        root.mkdir(parents=True, exist_ok=True)
    roots = [root.resolve() for root in code_roots]
    jail = Jail(bwrap, user.pw_uid, user.pw_gid, _outermost([*runtime_paths(), *roots]))
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
    return jail
