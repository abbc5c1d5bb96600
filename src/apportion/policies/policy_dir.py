"""``--policy-dir``: operator policies, hot-reloaded, run in the sandbox like uploads.

Layout: one sub-directory per policy, holding ``code/function.py`` (or
``function.py``) with the seed's ``AIOSv1PolicyRule`` class, and optionally
``policy.json`` — a policy record (CONTRACTS §3). Without ``policy.json`` the
URI is ``<directory name>:0.0-dev``.

The directory is scanned at start and then every ``interval`` seconds. A policy whose files
changed is copied into the code store (``PolicyStore.keep_folder``: content-addressed and
read-only, so the sandbox reads the version that was checked) and checked in a sandbox worker
(``PolicyRuntime.check``); its code is never imported in the server. A policy that fails to
load is logged and left out; if an earlier version of it loaded, that one keeps serving until
the files are fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from apportion.errors import ApportionError
from apportion.event_sink import EventSink
from apportion.policies.records import PolicyRecord
from apportion.policies.store import PolicyChange, PolicyEntry, PolicyStore

log = logging.getLogger(__name__)

Check = Callable[[PolicyEntry], Awaitable[None]]
"""Checks a policy in the sandbox (``PolicyRuntime.check``); raises ApportionError if broken."""


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(folder)}:{stat.st_mtime_ns}:{stat.st_size}\n".encode()
            )
    return digest.hexdigest()


def load_policy_folder(folder: Path, store: PolicyStore) -> PolicyEntry:
    """Read one policy folder's record and keep its code in ``store``'s code store (file I/O
    only, nothing imported); ValueError or ApportionError saying what is wrong. The entry still
    needs ``PolicyRuntime.check`` before it is offered."""
    record_file = folder / "policy.json"
    if record_file.is_file():
        try:
            body = json.loads(record_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{record_file} is not valid JSON: {exc}") from None
        record = PolicyRecord.parse(body, path=str(record_file))
    else:
        record = PolicyRecord(name=folder.name, version="0.0", release_tag="dev")
    if not (folder / "code" / "function.py").is_file() and not (folder / "function.py").is_file():
        raise ValueError(f"{folder} holds neither code/function.py nor function.py")
    return PolicyEntry(record, "policy_dir", code_dir=store.keep_folder(folder))


class PolicyDirWatcher:
    """Keeps the store's ``policy_dir`` policies equal to what the directory holds."""

    def __init__(
        self,
        directory: Path,
        store: PolicyStore,
        check: Check,
        emit: EventSink,
        *,
        interval: float = 2.0,
    ) -> None:
        """``check`` loads each new version in the sandbox; ``emit`` announces each change a
        rescan makes as ``policy_updated``."""
        self.directory = directory
        self._store = store
        self._check = check
        self._emit = emit
        self._interval = interval
        self._seen: dict[Path, tuple[str, PolicyEntry | None]] = {}

    async def scan(self) -> Sequence[tuple[str, PolicyChange]]:
        """Load new and changed folders, check them in the sandbox, forget removed ones, and
        update the store; return what changed (the start-up scan announces nothing, as nobody
        has seen the policies yet)."""
        collected = await asyncio.to_thread(self._collect)
        if collected is None:
            return []
        current: dict[Path, tuple[str, PolicyEntry | None]] = {}
        for folder, (fingerprint, entry, fresh) in collected.items():
            if fresh and entry is not None:
                try:
                    await self._check(entry)
                    log.info("loaded policy %s from %s", entry.uri, folder)
                except ApportionError as exc:
                    log.error("policy dir: %s failed to load: %s", folder, exc.message)
                    previous = self._seen.get(folder)
                    entry = previous[1] if previous else None
            current[folder] = (fingerprint, entry)
        self._seen = current
        return self._apply({e.uri: e for _, e in current.values() if e is not None})

    def _collect(self) -> dict[Path, tuple[str, PolicyEntry | None, bool]] | None:
        """Read what changed (file I/O only: runs on a worker thread); per folder: its
        fingerprint, its entry, and whether that entry is new and needs the check."""
        if not self.directory.is_dir():
            log.warning("policy dir %s does not exist; no operator policies loaded", self.directory)
            return None
        folders = sorted(
            p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        current: dict[Path, tuple[str, PolicyEntry | None, bool]] = {}
        for folder in folders:
            fingerprint = _fingerprint(folder)
            previous = self._seen.get(folder)
            if previous is not None and previous[0] == fingerprint:
                current[folder] = (*previous, False)
                continue
            try:
                current[folder] = (fingerprint, load_policy_folder(folder, self._store), True)
            except (ApportionError, ValueError, OSError) as exc:
                message = exc.message if isinstance(exc, ApportionError) else str(exc)
                log.error("policy dir: %s failed to load: %s", folder, message)
                current[folder] = (fingerprint, previous[1] if previous else None, False)
        return current

    def _apply(self, entries: dict[str, PolicyEntry]) -> Sequence[tuple[str, PolicyChange]]:
        """Update the store (on the event loop); return what changed."""
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
            for uri, change in await self.scan():
                await self._emit("policy_updated", {"policy_rule_uri": uri, "change": change})
