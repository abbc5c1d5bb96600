"""One server process per data dir.

A data dir — its SQLite database, policy code, stored files and local jobs' files — belongs to
one server process: SQLite arbitrates nothing between two servers' in-memory views of the fleet
(a hold made through one is invisible to the other, and a conflicting one failed as an internal
error). :func:`lock_data_dir` takes ``<data dir>/server.lock`` with an exclusive ``flock`` for
as long as the server runs; the kernel lets it go when the process ends, however it ends
(SIGKILL included), so a crashed server never blocks its restart. A second server is refused
at start, saying which process holds the data dir and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "server.lock"


class DataDirInUse(ValueError):
    """Another server process holds the data dir."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir`` for this process: an open descriptor (close-on-exec: no child keeps
    it, not even the local executor that outlives the server) whose lock lasts until it is
    closed or the process ends. Raises :class:`DataDirInUse` when another process holds it."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"another Apportion server (pid {holder}) is using the data dir {data_dir}: a data"
            " dir and its SQLite database serve one server process. Stop that server, or start"
            " this one with its own --data-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock_data_dir(fd: int) -> None:
    """Let the data dir go (the lock file stays: removing it would race a new holder)."""
    with contextlib.suppress(OSError):
        os.close(fd)
