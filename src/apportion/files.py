"""Files: what a user uploads for jobs to read, and what jobs write (docs/files.md).

A file belongs to an account and the user who uploaded it (:mod:`apportion.ownership`: the
account's keys see it, its user and admin keys delete it). Its record — name, size, SHA-512,
type, when, the job it came from — is in the ``files`` table; its content is stored by id
under ``<data dir>/files/`` (the server's alone), so the name a user gives never becomes a
path. An upload is streamed to a partial file, hashed on the way, counted against the limits
of :class:`FilesConfig` while it arrives, and renamed into place only when whole: a refused
or broken upload leaves nothing behind.

:class:`FileBook` keeps every record in memory and writes through to the table. Built once
by the app; written by the ``/files`` routes only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from apportion.errors import InvalidRequest, MessageTooLarge, NotFound
from apportion.ownership import Owner
from apportion.store.db import Database
from apportion.store.repos.files import FileRepo, FileRow
from apportion.store.turns import Fence
from apportion.timefmt import iso_utc

MAX_NAME_BYTES = 255


class FileType(StrEnum):
    """What a file is for (seed 003's file types, by name)."""

    INPUT = "input"
    TEMPLATE = "template"
    PARAMETER = "parameter"
    SCRIPT = "script"
    OUTPUT = "output"
    CASE = "case"
    TEMPORARY = "temporary"


class FilesConfig(BaseModel):
    """Limits of stored files (the ``[files]`` table of the server's config file)."""

    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(2**30, ge=1)  # one file
    max_account_bytes: int = Field(10 * 2**30, ge=1)  # every file of one account together
    max_account_files: int = Field(10_000, ge=1)  # how many files one account keeps


@dataclass(frozen=True)
class FileRecord:
    """One stored file."""

    file_id: str
    name: str
    size: int
    sha512: str
    type: FileType
    owner: Owner
    created_at: float
    job_id: str | None = None

    def public(self) -> dict[str, object]:
        """The record as ``GET /files/{id}`` shows it."""
        return {
            "id": self.file_id,
            "name": self.name,
            "size": self.size,
            "sha512": self.sha512,
            "type": self.type.value,
            **self.owner.public(),
            "created_at": iso_utc(self.created_at),
            "job_id": self.job_id,
        }


def check_file_name(name: str, *, path: str) -> str:
    """``name`` if a file may be called so — one path component, not ``.`` or ``..``, no
    control character, at most :data:`MAX_NAME_BYTES` bytes of UTF-8 —;
    :class:`InvalidRequest` naming ``path`` otherwise."""
    problem = None
    if not name or name in (".", ".."):
        problem = "is empty, '.' or '..'"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem is not None:
        raise InvalidRequest(
            f"the file name {name[:80]!r} {problem}; give the file a plain name such as"
            " 'input.csv'",
            path=path,
        )
    return name


def check_output_name(name: str) -> str:
    """``name`` if a job's output may be stored so: a relative path each of whose parts
    :func:`check_file_name` accepts; :class:`InvalidRequest` otherwise."""
    for part in name.split("/"):
        check_file_name(part, path="output_files")
    return name


def unknown_file(file_id: str) -> NotFound:
    """The answer for a file that does not exist, or that the asking key may not see."""
    return NotFound(f"no file {file_id!r}; list files with GET /files", details={"id": file_id})


class FileBook:
    """Every file's record in memory, its content on disk (see the module's docstring)."""

    def __init__(
        self, db: Database, root: Path, limits: FilesConfig, *, fence: Fence | None = None
    ) -> None:
        """``root``: where contents are stored (created 0700 at :meth:`load`); ``fence``:
        checked before each write of a record (a leader's term: :mod:`apportion.jobs.duty`)."""
        self._repo = FileRepo(db, fence=fence)
        self._root = root
        self.limits = limits
        self._files: dict[str, FileRecord] = {}
        # per account: bytes and files kept (kept with _files by _keep/_forget, so that an
        # upload's check of every chunk is a lookup), and bytes of uploads under way
        self._stored: Counter[str] = Counter()
        self._kept: Counter[str] = Counter()
        self._arriving: Counter[str] = Counter()

    async def load(self) -> None:
        """Read every record (once, at start), and remove partial uploads a crash left."""
        await asyncio.to_thread(self._prepare_root)
        for row in await self._repo.all():
            self._keep(
                FileRecord(
                    row.file_id,
                    row.name,
                    row.size,
                    row.sha512,
                    FileType(row.type),
                    Owner(row.account, row.user_name, row.key_id),
                    row.created_at,
                    row.job_id,
                )
            )

    def _prepare_root(self) -> None:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._root, 0o700)
        for partial in self._root.glob("*.part"):
            partial.unlink(missing_ok=True)

    # ---------------------------------------------------------------- reading
    def visible(self, visible: Callable[[Owner], bool]) -> list[FileRecord]:
        """The files whose owner ``visible`` accepts, oldest first."""
        return [f for f in self._files.values() if visible(f.owner)]

    def get(self, file_id: str, *, visible: Callable[[Owner], bool]) -> FileRecord:
        """The file ``file_id``, if ``visible`` accepts its owner; :func:`unknown_file`
        otherwise (the same answer as for an id that does not exist)."""
        record = self._files.get(file_id)
        if record is None or not visible(record.owner):
            raise unknown_file(file_id)
        return record

    def content(self, record: FileRecord) -> Path:
        """Where ``record``'s content is."""
        return self._root / record.file_id

    def output_of(self, job_id: str, name: str) -> FileRecord | None:
        """The output of ``job_id`` stored under ``name``, if there is one."""
        return next(
            (f for f in self._files.values() if f.job_id == job_id and f.name == name), None
        )

    def used_bytes(self, account: str) -> int:
        """What ``account``'s stored files take."""
        return self._stored[account]

    def _keep(self, record: FileRecord) -> None:
        self._files[record.file_id] = record
        self._stored[record.owner.account] += record.size
        self._kept[record.owner.account] += 1

    def _forget(self, record: FileRecord) -> None:
        if self._files.pop(record.file_id, None) is not None:
            self._stored[record.owner.account] -= record.size
            self._kept[record.owner.account] -= 1

    # ---------------------------------------------------------------- writing
    async def receive(
        self,
        owner: Owner,
        name: str,
        kind: FileType,
        chunks: AsyncIterator[bytes],
        *,
        job_id: str | None = None,
    ) -> FileRecord:
        """Store a new file of ``owner`` from ``chunks`` (an output of ``job_id``): hashed as it
        arrives, refused with :class:`MessageTooLarge` as soon as it passes a limit (nothing
        is kept), its record committed once the content is whole."""
        account, limits = owner.account, self.limits
        if self._kept[account] >= limits.max_account_files:
            raise MessageTooLarge(
                f"account {account!r} keeps {limits.max_account_files} files, its limit; delete"
                " some (DELETE /files/{id}) before uploading more",
                details={"limit_files": limits.max_account_files},
            )
        file_id = uuid.uuid4().hex
        partial = self._root / f"{file_id}.part"
        digest, size = hashlib.sha512(), 0
        try:
            with await asyncio.to_thread(partial.open, "xb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    self._arriving[account] += len(chunk)
                    self._check_room(account, size)
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(partial.rename, self._root / file_id)
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        finally:
            self._arriving[account] -= size
        record = FileRecord(
            file_id, name, size, digest.hexdigest(), kind, owner, time.time(), job_id
        )
        try:
            await self._repo.insert(_row(record))
        except BaseException:
            await asyncio.to_thread((self._root / file_id).unlink, missing_ok=True)
            raise
        self._keep(record)
        return record

    def _check_room(self, account: str, size: int) -> None:
        limits = self.limits
        if size > limits.max_file_bytes:
            raise MessageTooLarge(
                f"the file is over the limit of {limits.max_file_bytes} bytes a file may have;"
                " split it, or compress it",
                details={"limit_bytes": limits.max_file_bytes},
            )
        stored = self.used_bytes(account) + self._arriving[account]
        if stored > limits.max_account_bytes:
            raise MessageTooLarge(
                f"account {account!r} would store more than its limit of"
                f" {limits.max_account_bytes} bytes; delete files it no longer needs"
                " (DELETE /files/{id})",
                details={"limit_bytes": limits.max_account_bytes},
            )

    async def delete(self, record: FileRecord) -> None:
        """Forget ``record`` and remove its content."""
        await self._repo.delete(record.file_id)
        self._forget(record)
        await asyncio.to_thread(self.content(record).unlink, missing_ok=True)


def _row(record: FileRecord) -> FileRow:
    owner = record.owner
    return FileRow(
        file_id=record.file_id,
        account=owner.account,
        user_name=owner.user,
        key_id=owner.key_id,
        name=record.name,
        size=record.size,
        sha512=record.sha512,
        type=record.type.value,
        created_at=record.created_at,
        job_id=record.job_id,
    )
