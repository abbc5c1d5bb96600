"""Files an adapter writes for a job into a directory of the job's user (its launch file):
written 0600, owned by that user, never through a link the user put there."""

from __future__ import annotations

import os
from pathlib import Path

from apportion.adapters.base import RunAs


def write_private(path: Path, text: str, run_as: RunAs | None, *, mode: int = 0o600) -> None:
    """Write ``path`` with ``mode``, owned by ``run_as`` when there is one (its launcher
    reads the file as that user); a link at ``path`` is refused, not followed (``OSError``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), mode)
        if run_as is not None:
            os.fchown(fh.fileno(), run_as.uid, run_as.gid)
        fh.write(text)
