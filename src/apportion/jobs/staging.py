"""Putting a job's input files into its working directory before it starts (docs/files.md).

The working directory is the job user's: whatever is written there is written *as that
user*, never as the server, so that a symlink or a file the user planted there can only
lead where the user could write anyway. Each input file is therefore streamed from the
server's store (``<data dir>/files``, the server's alone) into a small Python program run
as the job's user (:data:`STAGE_PROGRAM`, a constant of this module; the names are argv
items, never a shell string), which writes it under a temporary name and renames it into
place — a file of the same name is replaced, so a dispatch retried after a crash stages
again without failing — or, with ``decompress``, extracts a tar (any compression) or zip
archive: only regular files and directories, no absolute path, no ``..``, no link or
device, and at most the account's storage limit of uncompressed bytes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from apportion.adapters.base import AdapterError, RunAs
from apportion.adapters.commands import run_command
from apportion.files import FileRecord

STAGE_PROGRAM = r"""
import os, shutil, sys, tarfile, tempfile, zipfile

dest, name, mode, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def refuse(message):
    sys.stderr.write(message)
    sys.exit(3)


def check(member, size, total):
    parts = member.replace("\\", "/").split("/")
    if member.startswith("/") or ".." in parts:
        refuse(f"{name}: the archive's member {member[:200]!r} would land outside the working directory")
    if total + size > limit:
        refuse(f"{name}: the archive unpacks to more than {limit} bytes")
    return total + size


os.chdir(dest)
source = sys.stdin.buffer
if mode == "copy":
    part = f".{name}.apportion-part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    os.replace(part, name)
elif mode == "tar":
    total = 0
    try:
        with tarfile.open(fileobj=source, mode="r|*") as archive:
            for member in archive:
                if not (member.isfile() or member.isdir()):
                    refuse(f"{name}: the archive's member {member.name[:200]!r} is not a regular file or directory")
                total = check(member.name, member.size, total)
                archive.extract(member, ".", set_attrs=False)
    except tarfile.TarError as exc:
        refuse(f"{name}: not a tar archive ({exc})")
else:
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(source, spool, 1 << 20)
        try:
            archive = zipfile.ZipFile(spool)
        except zipfile.BadZipFile as exc:
            refuse(f"{name}: not a zip archive ({exc})")
        total = 0
        for info in archive.infolist():
            kind = (info.external_attr >> 16) & 0o170000
            if kind not in (0, 0o100000, 0o040000):
                refuse(f"{name}: the archive's member {info.filename[:200]!r} is not a regular file or directory")
            total = check(info.filename, info.file_size, total)
            archive.extract(info, ".")
"""
"""The program that writes one input file as the job's user (see the module's docstring)."""

ARCHIVES = {
    ".tar": "tar",
    ".tar.gz": "tar",
    ".tgz": "tar",
    ".tar.bz2": "tar",
    ".tar.xz": "tar",
    ".txz": "tar",
    ".zip": "zip",
}
"""The archive kinds ``decompress`` takes, by the file name's ending."""

STAGE_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class StagedInput:
    """One input file of a job: its record, and whether to extract it."""

    record: FileRecord
    decompress: bool = False


def archive_kind(name: str) -> str | None:
    """``tar`` or ``zip`` for an archive's name (by its ending), None for anything else."""
    lowered = name.lower()
    return next((kind for end, kind in ARCHIVES.items() if lowered.endswith(end)), None)


async def stage_inputs(
    inputs: Sequence[StagedInput],
    content: dict[str, Path],
    working_dir: Path,
    run_as: RunAs | None,
    *,
    python: str,
    max_bytes: int,
) -> None:
    """Write each of ``inputs`` (its content at ``content[file id]``) into ``working_dir`` as
    ``run_as`` (None: as this process, which then is the job's user); :class:`AdapterError`
    naming the file when one cannot be."""
    for each in inputs:
        name = PurePosixPath(each.record.name).name  # an output's name is a relative path
        mode = (archive_kind(name) or "copy") if each.decompress else "copy"
        argv = [python, "-I", "-c", STAGE_PROGRAM, str(working_dir), name, mode, str(max_bytes)]
        with await asyncio.to_thread(content[each.record.file_id].open, "rb") as source:
            rc, _, err = await run_command(
                argv,
                what=f"staging input file {each.record.file_id} ({name})",
                within_seconds=STAGE_TIMEOUT_SECONDS,
                run_as=run_as,
                env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
                stdin=source,
                cwd="/",
            )
        if rc != 0:
            said = err.decode("utf-8", "replace").strip().splitlines()
            why = said[-1][:500] if said else f"exit code {rc}"
            raise AdapterError(f"staging input file {each.record.file_id} ({name}) failed: {why}")
