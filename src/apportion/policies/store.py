"""The policy store: records and code of every policy the server can run.

Three sources, one namespace of URIs:

* ``builtin`` — ``binpack``, ``spread``, ``topology``, ``similarity``; always present, never replaced.
* ``policy_dir`` — operator policies from ``--policy-dir``, hot-reloaded; each version's code is
  copied into the code store (as an upload's is) and run only in sandbox workers.
* ``upload`` — ``POST /policies``; code unpacked into ``<data dir>/policies/<sha256>/`` (the
  directory named by the sha256 of its tree, made read-only, the digest checked again when the
  store loads it) and run only in sandbox workers. The code as uploaded is stored with the
  record: the other servers sharing a PostgreSQL database unpack it into their own code stores
  when they hear of the upload (:meth:`PolicyStore.follow`), so every server runs it.

Versions are immutable: a URI that exists is never overwritten (``Conflict``);
a new version is a new URI. A deleted URI stays a tombstone (its row, ``source`` ``"deleted"``),
so a URI once used never names other code: uploading it again is a ``Conflict`` too. Records
live in the ``policies`` table; the in-memory index answers every lookup.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from apportion import jsonutil
from apportion.errors import Conflict, Forbidden, InvalidRequest, UnknownPolicy
from apportion.policies.archive import seal, tree_sha256, unpack_policy_code
from apportion.policies.protocol import PlacementPolicy
from apportion.policies.records import PolicyRecord
from apportion.policies.uri import PolicyURI
from apportion.store.db import Database
from apportion.store.notices import Notice, NoticeFeed
from apportion.store.repos.policies import DELETED, POLICY_TOPIC, PolicyRepo, PolicyRow

log = logging.getLogger(__name__)

Source = Literal["builtin", "policy_dir", "upload"]
PolicyChange = Literal["created", "replaced", "deleted"]
"""What happened to a policy (the ``change`` of the ``policy_updated`` event)."""


@dataclass(frozen=True)
class PolicyEntry:
    """One runnable policy: its record, where it came from and how to build it."""

    record: PolicyRecord
    source: Source
    policy_class: type | None = None  # built-in seed-contract classes (run in-process)
    placer: PlacementPolicy | None = None  # built-in placement policies: the internal protocol
    code_dir: Path | None = None  # uploaded and policy-dir policies (sandboxed): stored code
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @cached_property
    def uri(self) -> str:
        """``name:version-release_tag`` (computed once: it is read on every request)."""
        return str(self.record.uri)

    @property
    def sandboxed(self) -> bool:
        """Whether it runs in the sandbox: every policy that is not a built-in."""
        return self.source != "builtin"

    def public(self) -> dict[str, Any]:
        return self.record.public(source=self.source, warnings=list(self.warnings))


def _intact(code_dir: Path, sha256: str) -> bool:
    """Whether a code directory is named by, and still has, its digest."""
    return code_dir.is_dir() and code_dir.name == sha256 and tree_sha256(code_dir) == sha256


def _unknown(uri: str) -> UnknownPolicy:
    return UnknownPolicy(
        f"no policy {uri!r} in the store; list them with GET /policies "
        "(built-ins: binpack:1.0-stable, spread:1.0-stable, topology:1.0-stable, similarity:1.0-stable)",
        details={"policy_rule_uri": uri},
    )


class PolicyStore:
    """Lookup, upload and deletion of policies. Runs on the event loop."""

    def __init__(self, db: Database, data_dir: Path) -> None:
        self._repo = PolicyRepo(db)
        self._code_root = data_dir / "policies"
        self._entries: dict[str, PolicyEntry] = {}
        self._tombstones: set[str] = set()
        self._uploading: set[str] = set()  # URIs whose upload is being checked

    async def load(self, builtins: Mapping[str, PolicyEntry]) -> None:
        """Register the built-ins (``policies.catalog``), then read the uploaded policies from
        the database."""
        self._entries.update(builtins)
        await self._read_all()

    def follow(self, feed: NoticeFeed) -> None:
        """Take in the policies uploaded and deleted through the other servers sharing the
        database (their notices; every stored policy again on each reconnection); before
        ``feed`` starts."""
        feed.on(POLICY_TOPIC, self._heard, self._read_all)

    async def _heard(self, notice: Notice) -> None:
        for uri in notice.words:
            row = await self._repo.one(uri)
            if row is not None:
                await self._take_in(row)

    async def _read_all(self) -> None:
        for row in await self._repo.all():
            await self._take_in(row)

    async def _take_in(self, row: PolicyRow) -> None:
        """Make a stored policy's entry (unpacking its code from the database into this
        server's code store when it is not there), or its tombstone; nothing for one known."""
        if row.source == DELETED:
            known = self._entries.get(row.uri)
            if known is not None and known.source == "upload":  # not this server's policy-dir's
                del self._entries[row.uri]
            self._tombstones.add(row.uri)
            return
        if row.uri in self._entries:
            return
        code_dir = None
        if row.code_sha256 is not None:
            code_dir = await self._code_dir(row.uri, row.code_sha256)
            if code_dir is None:
                return
        stored = jsonutil.loads(row.record)
        warnings = tuple(stored.pop("_warnings", ()))
        record = PolicyRecord.model_validate(stored)
        self._entries[row.uri] = PolicyEntry(record, "upload", code_dir=code_dir, warnings=warnings)

    async def _code_dir(self, uri: str, sha256: str) -> Path | None:
        """The code of ``uri`` in this server's code store, checked against its digest:
        unpacked from the database when missing (uploaded through another server); None,
        logged, when it cannot be had intact."""
        code_dir = self._code_root / sha256
        if await asyncio.to_thread(_intact, code_dir, sha256):
            return code_dir
        code = None if code_dir.exists() else await self._repo.code(uri)
        if code is not None:
            filename, archive = code
            unpacked = await asyncio.to_thread(
                self._keep, lambda staging: unpack_policy_code(archive, filename, staging)
            )
            if unpacked == code_dir:
                return code_dir
        log.error(
            "policy %s is left out: its code %s is missing or does not match its sha256 "
            "(changed on disk, or uploaded before the database kept the code); upload the code"
            " again as a new version",
            uri,
            code_dir,
        )
        return None

    def get(self, uri: str) -> PolicyEntry:
        """The entry for ``uri``; :class:`UnknownPolicy` when absent."""
        entry = self._entries.get(uri)
        if entry is None:
            PolicyURI.parse(uri)
            raise _unknown(uri)
        return entry

    def list(self) -> list[PolicyEntry]:
        return [self._entries[uri] for uri in sorted(self._entries)]

    async def upload(
        self,
        record_body: Any,
        code: bytes,
        filename: str,
        *,
        check: Callable[[PolicyEntry], Awaitable[None]],
    ) -> PolicyEntry:
        """Store a new policy version: validate the record, unpack the code safely, ``check``
        it (the sandbox loads it), then persist. ``Conflict`` if the URI exists, was deleted or
        is being uploaded now. A version that ``check`` refuses (it raises) is not stored: its
        URI stays free (only a stored policy's URI becomes a tombstone when deleted)."""
        record = PolicyRecord.parse(record_body)
        uri = str(record.uri)
        self._check_new(uri)
        self._uploading.add(uri)
        try:
            entry = self._prepare(record, code, filename)
            await check(entry)
            await self._persist(entry, (filename, code))
        finally:
            self._uploading.discard(uri)
        return entry

    def _check_new(self, uri: str) -> None:
        if uri in self._entries:
            raise Conflict(
                f"policy {uri} exists and versions are immutable; upload it as a new version",
                details={"policy_rule_uri": uri},
            )
        if uri in self._tombstones:
            raise Conflict(
                f"policy {uri} was deleted, and a URI once used never names other code; "
                "upload it as a new version (another version or release tag)",
                details={"policy_rule_uri": uri, "deleted": True},
            )
        if uri in self._uploading:
            raise Conflict(
                f"policy {uri} is being uploaded by another request; retry to see its outcome",
                details={"policy_rule_uri": uri},
            )

    def _prepare(self, record: PolicyRecord, code: bytes, filename: str) -> PolicyEntry:
        """The entry of a new version, its code unpacked into the code store (not yet a
        policy of this store)."""
        code_dir = self._keep(lambda staging: unpack_policy_code(code, filename, staging))
        warnings = []
        requirements = code_dir / "code" / "requirements.txt"
        if requirements.is_file() and requirements.read_text(errors="replace").strip():
            warnings.append(
                "code/requirements.txt is not installed: the server never pip-installs at request "
                "time; install what the policy needs into the server's environment"
            )
        return PolicyEntry(record, "upload", code_dir=code_dir, warnings=tuple(warnings))

    async def _persist(self, entry: PolicyEntry, code: tuple[str, bytes]) -> None:
        record, code_dir = entry.record, entry.code_dir
        assert code_dir is not None
        stored = record.model_dump(by_alias=True) | {"_warnings": list(entry.warnings)}
        await self._repo.insert(
            PolicyRow(
                uri=entry.uri,
                name=record.name,
                version=record.version,
                release_tag=record.release_tag,
                record=jsonutil.dumps_str(stored),
                code_path=str(code_dir),
                code_sha256=code_dir.name,
                source="upload",
                created_at=time.time(),
            ),
            code,
        )
        self._entries[entry.uri] = entry

    def _keep(self, fill: Callable[[Path], Path]) -> Path:
        """Store a code tree under ``<code root>/<tree sha256>/``, read-only; return that path.

        ``fill`` writes the tree into an empty staging directory (inside the code root) and
        answers its root; a tree already stored is kept once."""
        self._code_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._code_root))
        try:
            root = fill(staging)
            code_dir = self._code_root / tree_sha256(root)
            if not code_dir.exists():
                shutil.move(str(root), code_dir)
                seal(code_dir)
            return code_dir
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def keep_folder(self, folder: Path) -> Path:
        """Copy a ``--policy-dir`` folder's files (not ``__pycache__``, not links) into the code
        store and return the stored, read-only copy (file I/O: may run on a worker thread)."""

        def skipped(directory: str, names: list[str]) -> list[str]:
            return [
                name
                for name in names
                if name == "__pycache__"
                or name.startswith(".")
                or Path(directory, name).is_symlink()
            ]

        def fill(staging: Path) -> Path:
            shutil.copytree(folder, staging / "tree", ignore=skipped)
            return staging / "tree"

        return self._keep(fill)

    async def delete(self, uri: str) -> None:
        entry = self.get(uri)
        if entry.source != "upload":
            raise Forbidden(
                f"policy {uri} is a {entry.source} policy and cannot be deleted through the API",
                details={"policy_rule_uri": uri, "source": entry.source},
            )
        await self._repo.delete(uri)
        del self._entries[uri]
        self._tombstones.add(uri)

    def set_local(self, entries: Mapping[str, PolicyEntry]) -> Sequence[tuple[str, PolicyChange]]:
        """Replace the ``policy_dir`` policies with ``entries`` (hot reload) and return what
        changed, ``(uri, "created" | "replaced" | "deleted")`` in URI order. Never shadows
        another source's policy: an entry with the URI of a built-in or uploaded policy is
        refused (``InvalidRequest``) and nothing is changed."""
        for uri in entries:
            existing = self._entries.get(uri)
            if existing is not None and existing.source != "policy_dir":
                raise InvalidRequest(
                    f"policy-dir policy {uri} has the URI of a {existing.source} policy; "
                    "give it another name or version",
                    path="policy_dir",
                )
        changes: list[tuple[str, PolicyChange]] = []
        for uri in [u for u, e in self._entries.items() if e.source == "policy_dir"]:
            if uri not in entries:
                del self._entries[uri]
                changes.append((uri, "deleted"))
        for uri, entry in entries.items():
            existing = self._entries.get(uri)
            if existing is not entry:
                self._entries[uri] = entry
                changes.append((uri, "created" if existing is None else "replaced"))
        return sorted(changes)
