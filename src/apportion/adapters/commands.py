"""Running a scheduler's command-line tool, or a small program as a job's user: an argv list
(never a shell), a timeout, no process left behind, failures as :class:`AdapterError`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import IO

from apportion.adapters.base import AdapterError, RunAs


async def run_command(
    argv: Sequence[str],
    *,
    what: str,
    within_seconds: float,
    run_as: RunAs | None = None,
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    cwd: str | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` (as ``run_as``'s uid, gid and groups when given; with ``stdin`` on its
    standard input, else nothing) until it exits; ``(returncode, stdout, stderr)``. Raises
    :class:`AdapterError` naming ``what`` when it cannot start or does not end within
    ``within_seconds`` (retryable; it is killed). A cancelled caller kills it too."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
            cwd=cwd,
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            extra_groups=None if run_as is None else list(run_as.groups),
        )
    except OSError as exc:
        raise AdapterError(f"cannot run {what} ({argv[0]}): {exc}") from exc
    try:
        async with asyncio.timeout(within_seconds):
            out, err = await proc.communicate()
    except TimeoutError:
        raise AdapterError(
            f"{what} did not answer within {within_seconds:g} s", retryable=True
        ) from None
    finally:
        if proc.returncode is None:  # timed out or our caller was cancelled: no orphans
            proc.kill()
            await asyncio.shield(proc.wait())
    return (proc.returncode if proc.returncode is not None else -1), out, err
