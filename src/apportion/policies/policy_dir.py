"""``--policy-dir``: operator-trusted policies loaded in-process and hot-reloaded.

Layout: one sub-directory per policy, holding ``code/function.py`` (or
``function.py``) with the seed's ``AIOSv1PolicyRule`` class, and optionally
``policy.json`` — a policy record (CONTRACTS §3). Without ``policy.json`` the
URI is ``<directory name>:0.0-dev``.

The directory is scanned at start and then every ``interval`` seconds; a
policy whose files changed is loaded again (signature checked at load time). A
policy that fails to load is logged and left out; if an earlier version of it
loaded, that one keeps serving until the files are fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from apportion.errors import ApportionError
from apportion.event_sink import EventSink
from apportion.policies.loader import check_policy_class, load_policy_class
from apportion.policies.records import PolicyRecord
from apportion.policies.store import PolicyChange, PolicyEntry, PolicyStore

log = logging.getLogger(__name__)

_LOADS = itertools.count()  # every load imports under a fresh module name


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(folder)}:{stat.st_mtime_ns}:{stat.st_size}\n".encode()
            )
    return digest.hexdigest()


def load_policy_folder(folder: Path) -> PolicyEntry:
    """Load one policy folder; :class:`~apportion.errors.ApportionError` saying what is wrong."""
    record_file = folder / "policy.json"
    if record_file.is_file():
        try:
            body = json.loads(record_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{record_file} is not valid JSON: {exc}") from None
        record = PolicyRecord.parse(body, path=str(record_file))
    else:
        record = PolicyRecord(name=folder.name, version="0.0", release_tag="dev")
    module = "apportion_policy_dir_" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    cls = load_policy_class(folder, module_name=f"{module}_{next(_LOADS)}")
    check_policy_class(cls, where=str(folder))
    return PolicyEntry(record, "policy_dir", policy_class=cls)


class PolicyDirWatcher:
    """Keeps the store's ``policy_dir`` policies equal to what the directory holds."""

    def __init__(
        self, directory: Path, store: PolicyStore, emit: EventSink, *, interval: float = 2.0
    ) -> None:
        """``emit`` announces each change a rescan makes as ``policy_updated``."""
        self.directory = directory
        self._store = store
        self._emit = emit
        self._interval = interval
        self._seen: dict[Path, tuple[str, PolicyEntry | None]] = {}

    def scan(self) -> None:
        """Load new and changed folders, forget removed ones, and update the store (at start:
        nothing is announced, as nobody has seen the policies yet)."""
        self._apply(self._collect())

    def _collect(self) -> dict[str, PolicyEntry] | None:
        """Load what changed (file I/O and imports: may run on a worker thread)."""
        if not self.directory.is_dir():
            log.warning("policy dir %s does not exist; no operator policies loaded", self.directory)
            return None
        folders = sorted(
            p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        current: dict[Path, tuple[str, PolicyEntry | None]] = {}
        for folder in folders:
            fingerprint = _fingerprint(folder)
            previous = self._seen.get(folder)
            if previous is not None and previous[0] == fingerprint:
                current[folder] = previous
                continue
            try:
                entry: PolicyEntry | None = load_policy_folder(folder)
                log.info("loaded policy %s from %s", entry.uri if entry else "?", folder)
            except (ApportionError, ValueError, OSError) as exc:
                message = exc.message if isinstance(exc, ApportionError) else str(exc)
                log.error("policy dir: %s failed to load: %s", folder, message)
                entry = previous[1] if previous else None
            current[folder] = (fingerprint, entry)
        self._seen = current
        return {e.uri: e for _, e in current.values() if e is not None}

    def _apply(self, entries: dict[str, PolicyEntry] | None) -> Sequence[tuple[str, PolicyChange]]:
        """Update the store (on the event loop); return what changed."""
        if entries is None:
            return []
        try:
            return self._store.set_local(entries)
        except ApportionError as exc:
            log.error("policy dir: %s", exc.message)
            return []

    async def run(self) -> None:
        """Scan every ``interval`` seconds until cancelled; announce every change as
        ``policy_updated`` ``{"policy_rule_uri", "change"}``, as an upload or a deletion is."""
        while True:
            await asyncio.sleep(self._interval)
            for uri, change in self._apply(await asyncio.to_thread(self._collect)):
                await self._emit("policy_updated", {"policy_rule_uri": uri, "change": change})
