"""Policies ready for ``POST /policies``: a folder packed in memory, or an archive file.

A policy folder is what ``--policy-dir`` loads: ``code/function.py`` (or ``function.py``) and
optionally ``policy.json`` (the store record). It is packed as a ``.tar.gz`` in memory,
without ``__pycache__``, hidden files or links (the server refuses links anyway).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.clients.errors import InvalidRequestError

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar.xz", ".py")


@dataclass(frozen=True)
class PolicyUpload:
    """The two form parts of an upload: the record and the code (with its file name)."""

    record: dict[str, Any]
    code: bytes
    filename: str


def _bad(message: str, path: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="InvalidRequest", details={"path": path})


def pack_folder(folder: Path) -> bytes:
    """The folder's files as a ``.tar.gz`` (paths relative to the folder, sorted)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            archive.add(path, arcname=str(relative), recursive=False)
    return buffer.getvalue()


def prepare_upload(source: Path, record: dict[str, Any] | None = None) -> PolicyUpload:
    """Read a policy folder or archive file. ``record`` overrides ``policy.json`` key by key;
    an archive or ``.py`` file needs ``record`` with at least name, version and release_tag.
    Raises :class:`InvalidRequestError` saying what is missing."""
    if source.is_dir():
        stored: dict[str, Any] = {}
        record_file = source / "policy.json"
        if record_file.is_file():
            try:
                stored = json.loads(record_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise _bad(f"{record_file} is not valid JSON: {exc}", str(record_file)) from None
        if (
            not (source / "code" / "function.py").is_file()
            and not (source / "function.py").is_file()
        ):
            raise _bad(
                f"{source} holds no code/function.py (the policy class AIOSv1PolicyRule)",
                str(source),
            )
        merged = {**stored, **(record or {})}
        if "name" not in merged:
            merged.setdefault("name", source.name)
        merged.setdefault("version", "0.0")
        merged.setdefault("release_tag", "dev")
        return PolicyUpload(merged, pack_folder(source), f"{source.name}.tar.gz")
    if not source.is_file():
        raise _bad(f"{source} is neither a policy folder nor an archive file", str(source))
    if not source.name.endswith(ARCHIVE_SUFFIXES):
        raise _bad(
            f"{source.name} is not an archive: use .zip, .tar.gz, .tar.xz or .py", str(source)
        )
    if not record or not {"name", "version", "release_tag"} <= record.keys():
        raise _bad(
            "uploading an archive needs a record with name, version and release_tag "
            "(--name, --version, --release-tag, or --record FILE)",
            "record",
        )
    filename = source.name.replace(".tgz", ".tar.gz")
    return PolicyUpload(dict(record), source.read_bytes(), filename)
