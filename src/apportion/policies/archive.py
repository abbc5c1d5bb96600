"""Safe unpacking of uploaded policy code (CONTRACTS §3).

The policy store calls :func:`unpack_policy_code` once per upload, before anything else looks at
the code. Nothing here imports or runs the code, and ``code/requirements.txt`` is never installed
(the caller may record a warning when it is present and non-empty).

Every entry is checked before a byte is written: no absolute paths, no ``..``, no links, devices
or fifos, nothing whose resolved path leaves ``dest``; the uncompressed size is counted while
streaming (headers are not trusted) and the number of entries is capped. A refusal raises
:class:`InvalidRequest` with ``path="code"`` and leaves ``dest`` empty again.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from apportion.errors import InvalidRequest

ACCEPTED = (
    "a .zip, .tar.gz (.tgz) or .tar.xz archive holding code/function.py, or a single .py file"
)
_CHUNK = 1 << 16
_IGNORED_TOP = "__MACOSX"


def _refuse(reason: str) -> InvalidRequest:
    return InvalidRequest(f"policy code refused: {reason}; upload {ACCEPTED}", path="code")


def _kind(filename: str) -> str:
    name = filename.lower()
    for suffix, kind in ((".zip", "zip"), (".tar.gz", "gz"), (".tgz", "gz"), (".tar.xz", "xz")):
        if name.endswith(suffix):
            return kind
    if name.endswith(".py"):
        return "py"
    raise _refuse(f"the file name {filename!r} has an unknown extension")


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive entry name, or a refusal saying what is wrong."""
    if "\x00" in name or "\\" in name:
        raise _refuse(f"entry {name!r} contains a backslash or NUL byte; use '/' separators")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(f"entry {name!r} is an absolute path; entries must be relative")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise _refuse(f"entry {name!r} contains '..'; entries must stay inside the archive")
    return parts


class _Writer:
    """Writes checked entries under ``dest`` and counts entries and bytes against the caps."""

    def __init__(self, dest: Path, max_bytes: int, max_files: int) -> None:
        self.root = dest.resolve()
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.entries = 0
        self.total = 0

    def _target(self, name: str) -> Path | None:
        self.entries += 1
        if self.entries > self.max_files:
            raise _refuse(f"the archive has more than {self.max_files} entries (too many files)")
        parts = _safe_parts(name)
        if not parts or parts[0] == _IGNORED_TOP:
            return None
        target = self.root.joinpath(*parts)
        resolved = target.parent.resolve() / target.name
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise _refuse(f"entry {name!r} resolves outside the destination")
        return resolved

    def directory(self, name: str) -> None:
        target = self._target(name)
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)

    def file(self, name: str, source: IO[bytes]) -> None:
        target = self._target(name)
        if target is None:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, 0o644)
        except FileExistsError:
            raise _refuse(f"entry {name!r} appears twice") from None
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise _refuse(
                        f"the uncompressed size is over the limit of {self.max_bytes} bytes"
                    )
                out.write(chunk)


def _unpack_zip(data: bytes, writer: _Writer) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            if stat.S_ISLNK(mode):
                raise _refuse(f"entry {info.filename!r} is a symbolic link; links are not allowed")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: type not recorded
                raise _refuse(f"entry {info.filename!r} is not a regular file or directory")
            if info.flag_bits & 0x1:
                raise _refuse(f"entry {info.filename!r} is encrypted")
            if info.is_dir():
                writer.directory(info.filename)
            else:
                with archive.open(info) as source:
                    writer.file(info.filename, source)


def _tar_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := archive.next()) is not None:
        yield member


def _unpack_tar(data: bytes, kind: str, writer: _Writer) -> None:
    # Stream mode ("r|gz"): one pass, no random access, members read as they come.
    mode: Literal["r|gz", "r|xz"] = "r|gz" if kind == "gz" else "r|xz"
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as archive:
        for member in _tar_members(archive):
            if member.issym() or member.islnk():
                what = "symbolic link" if member.issym() else "hard link"
                raise _refuse(f"entry {member.name!r} is a {what}; links are not allowed")
            if member.isdir():
                writer.directory(member.name)
            elif member.isfile():
                source = archive.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    raise _refuse(f"entry {member.name!r} has no data")
                writer.file(member.name, source)
            else:
                raise _refuse(
                    f"entry {member.name!r} is a device, fifo or other special file; "
                    "only regular files and directories are allowed"
                )


def _code_root(dest: Path) -> Path:
    if (dest / "code" / "function.py").is_file():
        return dest
    tops = sorted(p for p in dest.iterdir() if p.name != _IGNORED_TOP)
    if len(tops) == 1 and tops[0].is_dir() and (tops[0] / "code" / "function.py").is_file():
        return tops[0]
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in tops) or "nothing"
    raise _refuse(f"missing code/function.py (top level holds: {found})")


def _clear(dest: Path) -> None:
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def unpack_policy_code(
    data: bytes,
    filename: str,
    dest: Path,
    *,
    max_bytes: int = 20 * 2**20,
    max_files: int = 1000,
) -> Path:
    """Unpack an uploaded policy into the empty directory ``dest`` and return its root.

    Called by the policy store on upload. ``filename`` picks the format by its extension:
    ``.zip``, ``.tar.gz``/``.tgz``, ``.tar.xz`` or ``.py`` (written as ``dest/code/function.py``).
    Returns the directory that holds ``code/function.py``: ``dest`` itself, or its single top
    folder when every entry is under one (``mypolicy/code/function.py``). ``__MACOSX/`` entries
    are skipped. Raises :class:`InvalidRequest` (``path="code"``) naming what was wrong and what is
    accepted; on a refusal ``dest`` is emptied again. ``dest`` is created when missing; a
    non-empty ``dest`` is a caller bug (:class:`ValueError`).
    """
    kind = _kind(filename)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"unpack destination {dest} is not empty")
    if len(data) > max_bytes:
        raise _refuse(f"the upload is {len(data)} bytes, over the limit of {max_bytes} bytes")
    writer = _Writer(dest, max_bytes, max_files)
    try:
        if kind == "py":
            writer.file("code/function.py", io.BytesIO(data))
        elif kind == "zip":
            _unpack_zip(data, writer)
        else:
            _unpack_tar(data, kind, writer)
        return _code_root(dest)
    except InvalidRequest:
        _clear(dest)
        raise
    except Exception as exc:  # BadZipFile, TarError, EOFError, zlib.error, LZMAError, OSError
        _clear(dest)
        raise _refuse(f"the file is not a readable {kind} archive ({exc})") from None


def tree_sha256(root: Path) -> str:
    """The sha256 of a code tree: every regular file's relative path and bytes, in path order.

    Called by the policy store: uploaded code is stored under ``<code root>/<tree_sha256>/``,
    and the digest is checked again when the store loads it. Directories without files and
    ``__pycache__`` do not count (the jail never writes bytecode; they would only be noise)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if "__pycache__" not in p.parts):
        if path.is_file() and not path.is_symlink():
            name = path.relative_to(root).as_posix().encode()
            digest.update(len(name).to_bytes(4, "big") + name)
            data = path.read_bytes()
            digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def seal(root: Path) -> None:
    """Make a stored code tree read-only for everybody (files 0444, directories 0555), so the
    sandbox user (a stranger to these files) may read it and nobody writes it by accident."""
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)
