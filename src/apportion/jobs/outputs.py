"""A job's outputs registered as stored files when it ends (docs/files.md).

The files of the working directory that match the job's ``output_files`` patterns are read
*as the job's user* — the directory is the user's, and the server never opens a path in it
(a link the user planted there cannot make the server read a file of its own) — by a small
Python program (:data:`COLLECT_PROGRAM`, a constant of this module; the patterns are argv
items, never a shell string). It writes to its standard output, per file, one JSON line
``{"name", "size"}`` and then exactly that many bytes: only regular files (no link is
followed), named by their path relative to the working directory, at most
:data:`MAX_OUTPUT_FILES` of them. The server stores each as a file of type ``output`` of the
job's account and user, with the job's id; a file that job already has under that name is
skipped, so collecting again after a crash adds nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from apportion.adapters.base import RunAs
from apportion.errors import ApportionError
from apportion.files import FileBook, FileType, check_output_name
from apportion.jobs.records import Job

MAX_OUTPUT_FILES = 1000
COLLECT_TIMEOUT_SECONDS = 600.0
CHUNK_BYTES = 256 * 1024

COLLECT_PROGRAM = r"""
import glob, json, os, stat, sys

dest, most, patterns = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
os.chdir(dest)
out = sys.stdout.buffer
seen = set()
for pattern in patterns:
    for name in sorted(glob.glob(pattern, recursive=True)):
        name = os.path.normpath(name)
        if name in seen or name.startswith("..") or os.path.isabs(name):
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # a link, or gone
        with os.fdopen(fd, "rb") as source:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                continue
            if len(seen) == most:
                sys.stderr.write(f"more than {most} files match; the first {most} were kept")
                sys.exit(3)
            seen.add(name)
            size = info.st_size
            out.write(json.dumps({"name": name, "size": size}).encode() + b"\n")
            left = size
            while left:
                chunk = source.read(min(left, 1 << 20))
                if not chunk:
                    sys.stderr.write(f"{name} shrank while it was read")
                    sys.exit(4)
                out.write(chunk)
                left -= len(chunk)
out.flush()
"""
"""The program that reads the outputs as the job's user (see the module's docstring)."""


class BrokenStream(Exception):
    """The collecting program's output ended inside a file."""


async def collect_outputs(
    job: Job, working_dir: Path, run_as: RunAs | None, files: FileBook, *, python: str
) -> str:
    """Store the files of ``working_dir`` that match ``job``'s ``output_files``; what was done,
    in words for the job's history (``"2 output file(s) registered"``, or why not all)."""
    patterns = job.config.output_files
    if not patterns:
        return ""
    argv = [python, "-I", "-c", COLLECT_PROGRAM, str(working_dir), str(MAX_OUTPUT_FILES)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *patterns,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",
        env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
        user=None if run_as is None else run_as.uid,
        group=None if run_as is None else run_as.gid,
        extra_groups=None if run_as is None else list(run_as.groups),
    )
    assert proc.stdout is not None and proc.stderr is not None
    stored: list[str] = []
    trouble = ""
    try:
        async with asyncio.timeout(COLLECT_TIMEOUT_SECONDS):
            await _store_each(job, proc.stdout, files, stored)
            said = (await proc.stderr.read(4096)).decode("utf-8", "replace").strip()
            if await proc.wait() != 0:
                trouble = said or f"the collecting program exited with {proc.returncode}"
    except ApportionError as exc:  # a limit of the account's storage, a name refused
        trouble = exc.message
    except (BrokenStream, ValueError, KeyError) as exc:
        trouble = f"the collecting program's output was broken: {exc}"
    except TimeoutError:
        trouble = f"collecting took longer than {COLLECT_TIMEOUT_SECONDS:.0f} s"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    words = f"{len(stored)} output file(s) registered"
    return f"{words}; not all: {trouble}" if trouble else words


async def _store_each(
    job: Job, stream: asyncio.StreamReader, files: FileBook, stored: list[str]
) -> None:
    """Read the program's stream to its end, storing each file (its id added to ``stored``
    as soon as it is kept)."""
    while header := await stream.readline():
        entry = json.loads(header)
        name, size = str(entry["name"]), int(entry["size"])
        content = _exactly(stream, size)
        if files.output_of(job.job_id, name) is not None:
            async for _ in content:  # kept already (collected before a crash): skip it
                pass
            continue
        check_output_name(name)
        record = await files.receive(job.owner, name, FileType.OUTPUT, content, job_id=job.job_id)
        stored.append(record.file_id)


async def _exactly(stream: asyncio.StreamReader, size: int) -> AsyncIterator[bytes]:
    left = size
    while left:
        chunk = await stream.read(min(left, CHUNK_BYTES))
        if not chunk:
            raise BrokenStream(f"the output stream ended {left} bytes early")
        left -= len(chunk)
        yield chunk
