"""Offline policy testing: run a policy against a saved registry snapshot, as the server would.

``apportion policies test DIR --snapshot FILE --inputs JSON`` calls :func:`run_offline`. The
snapshot is what ``apportion clusters export`` writes: ``{"clusters": [...], "metrics":
{cluster_id: doc}}``. Nothing is faked: the documents go through the server's own registry
(validation by ``validate_cluster_document``, the numpy ``FleetView``, metrics validation) on a
throw-away SQLite file; the policy folder is loaded with the server's loader
(``load_policy_class`` via the ``--policy-dir`` loader) or taken from the built-ins of
``apportion.policies.catalog``; and the request runs through the server's
``AllocationService`` — same candidates, same parameter and settings merging, same injected
``cluster_client``/``cluster_metrics_client``, same timeout, same output validation
(``validate_output``) and the same decision record (``explain``).

The command runs it through :func:`run_offline_in_child`: a child process in its own process
group, stopped with everything it started once it has answered or its deadline has passed. A
policy folder runs in the sandbox (whose worker is killed at its timeout) — but with
``--unsandboxed`` it runs on a thread that cannot be stopped, and a policy that loops past its
timeout would then keep the command's CPU busy and its interpreter from ever exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from apportion.allocation.holds import HoldManager
from apportion.allocation.messages import AllocationRequest, parse_message
from apportion.allocation.service import AllocationService
from apportion.engine.decisions import Decision, JsonValue, Placement, placements_json
from apportion.errors import ApportionError, InvalidRequest, PolicyError, PolicyTimeout
from apportion.ownership import DEFAULT_ACCOUNT, Actor
from apportion.policies.catalog import builtin_catalog
from apportion.policies.clients import RegistryServices
from apportion.policies.policy_dir import load_policy_folder
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.sandbox.pool import SandboxLimits, SandboxPool
from apportion.policies.store import PolicyStore
from apportion.registry.service import Registry
from apportion.store.db import Database

OFFLINE_ACTOR = Actor(
    key_id="offline", account=DEFAULT_ACCOUNT, user="offline", sees_all=True, is_admin=True
)
"""Who asks in an offline evaluation: the one user of a private, in-memory server."""


@dataclass(frozen=True)
class OfflineResult:
    """What the policy decided: the validated placements (one per request), whether the
    inputs were a gang, and the decision record (candidates, rejections, scores, timings)."""

    policy_rule_uri: str
    placements: tuple[Placement, ...]
    is_gang: bool
    decision: Decision

    def as_json(self) -> dict[str, JsonValue]:
        """The result as the allocation answer's ``data`` plus the decision record."""
        data = placements_json(self.placements)
        return {
            "policy_rule_uri": self.policy_rule_uri,
            "data": data if self.is_gang else data[0],
            "explain": self.decision.to_json(),
        }


def _snapshot_parts(snapshot: Any) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(snapshot, list):
        return snapshot, {}
    if not isinstance(snapshot, Mapping) or not isinstance(snapshot.get("clusters"), list):
        raise InvalidRequest(
            'the snapshot must be {"clusters": [...], "metrics": {...}} '
            "(write one with `apportion clusters export`)",
            path="snapshot",
        )
    metrics = snapshot.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise InvalidRequest(
            "snapshot.metrics must map cluster ids to documents", path="snapshot.metrics"
        )
    return list(snapshot["clusters"]), dict(metrics)


async def _load_registry(registry: Registry, snapshot: Any) -> None:
    clusters, metrics = _snapshot_parts(snapshot)
    for index, doc in enumerate(clusters):
        try:
            await registry.upsert_cluster(doc)
        except InvalidRequest as exc:
            where = f"snapshot.clusters[{index}]" + (f".{exc.path}" if exc.path else "")
            raise InvalidRequest(f"{where}: {exc.message}", path=where) from None
    for cluster_id, doc in sorted(metrics.items()):
        if isinstance(doc, Mapping):
            clean = {k: v for k, v in doc.items() if k != "stale"}  # the server adds it on read
            await registry.put_metrics(cluster_id, clean)


async def run_offline(
    policy: str | Path,
    snapshot: Any,
    inputs: Mapping[str, Any],
    *,
    parameters: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    clusters: Sequence[str] | None = None,
    filter: Mapping[str, Any] | None = None,
    timeout_seconds: float = 10.0,
    unsandboxed: bool = False,
) -> OfflineResult:
    """Evaluate ``policy`` (a policy folder, or a built-in URI like ``binpack:1.0-stable``) on
    ``snapshot`` for ``inputs``. Raises the server's typed errors
    (:mod:`apportion.errors`): ``InvalidRequest`` for a bad snapshot, folder or request,
    ``NoFeasiblePlacement`` with per-candidate reasons, ``PolicyError`` when the policy raises,
    ``PolicyTimeout``, ``InvalidPolicyOutput`` when its answer does not validate. A policy
    folder runs in the sandbox (docs/security.md) unless ``unsandboxed`` says otherwise."""
    catalog = builtin_catalog()
    folder = Path(policy) if not isinstance(policy, str) or policy not in catalog else None
    if folder is not None and not folder.is_dir():
        raise InvalidRequest(
            f"{policy} is neither a policy folder nor a built-in policy "
            f"({', '.join(sorted(catalog))})",
            path="policy",
        )
    with tempfile.TemporaryDirectory(prefix="apportion-offline-") as tmp:
        db = await Database.open(f"sqlite:///{tmp}/offline.db")
        sandbox: SandboxPool | None = None
        holds: HoldManager | None = None
        try:
            registry = Registry(db)
            await registry.load()
            await _load_registry(registry, snapshot)
            store = PolicyStore(db, Path(tmp))
            await store.load(catalog)
            sandbox = SandboxPool(
                size=1,
                limits=SandboxLimits(timeout_seconds=timeout_seconds),
                code_roots=(Path(tmp) / "policies",),
                unsandboxed=unsandboxed,
            )
            runtime = PolicyRuntime(db, RegistryServices(registry), sandbox)
            if folder is not None:
                entry = await asyncio.to_thread(load_policy_folder, folder.resolve(), store)
                await runtime.check(entry)
                store.set_local({entry.uri: entry})
                uri = entry.uri
            else:
                uri = str(policy)
            holds = HoldManager(db, registry.fleet)
            await holds.start()
            service = AllocationService(
                registry, store, runtime, holds, default_lease_seconds=60.0, max_lease_seconds=60.0
            )
            message = parse_message(
                {
                    "adhoc": True,
                    "policy_rule_uri": uri,
                    "clusters": list(clusters or []),
                    "inputs": dict(inputs),
                    "filter": dict(filter or {}),
                    "parameters": dict(parameters or {}),
                    "settings": dict(settings or {}),
                    "explain": True,
                }
            )
            assert isinstance(message, AllocationRequest)
            answer = await service.allocate(message, OFFLINE_ACTOR)
        finally:
            if holds is not None:
                await holds.close()
            if sandbox is not None:
                await sandbox.close()
            await db.close()
    assert answer.decision is not None  # asked for with explain
    return OfflineResult(
        policy_rule_uri=uri,
        placements=answer.placements,
        is_gang=answer.is_gang,
        decision=answer.decision,
    )


CHILD_GRACE_SECONDS = 30.0
"""How long past the policy timeout the child may take to start, load and answer."""


def run_offline_in_child(
    policy: str | Path,
    snapshot: Any,
    inputs: Mapping[str, Any],
    *,
    parameters: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    clusters: Sequence[str] | None = None,
    timeout_seconds: float = 10.0,
    unsandboxed: bool = False,
) -> OfflineResult:
    """:func:`run_offline` in a child process (``apportion policies test``). The child leads
    its own process group; once it has answered — or ``timeout_seconds`` plus
    :data:`CHILD_GRACE_SECONDS` have passed — that group is killed (the child, a policy thread
    still spinning in it, any process a policy started), so the caller always returns.
    Returns the result or raises the child's typed error; :class:`PolicyTimeout` when the
    child gave no answer by the deadline."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    arguments = {
        "policy": policy,
        "snapshot": snapshot,
        "inputs": dict(inputs),
        "parameters": dict(parameters) if parameters is not None else None,
        "settings": dict(settings) if settings is not None else None,
        "clusters": list(clusters) if clusters is not None else None,
        "timeout_seconds": timeout_seconds,
        "unsandboxed": unsandboxed,
    }
    child = context.Process(target=_child_main, args=(sender, arguments), daemon=True)
    child.start()
    sender.close()
    deadline = timeout_seconds + CHILD_GRACE_SECONDS
    try:
        answered = receiver.poll(deadline)
        outcome: OfflineResult | ApportionError | None = None
        if answered:
            try:
                outcome = receiver.recv()
            except EOFError:  # the child died without answering (killed, crashed)
                outcome = None
    finally:
        _kill_group(child)
        receiver.close()
    if isinstance(outcome, OfflineResult):
        return outcome
    if isinstance(outcome, ApportionError):
        raise outcome
    if answered:
        raise PolicyError(
            f"the offline run of {policy} ended without an answer (exit code {child.exitcode})",
            details={"exit_code": child.exitcode},
        )
    raise PolicyTimeout(
        f"the offline run of {policy} gave no answer within {deadline:g} s "
        f"(--timeout {timeout_seconds:g} plus {CHILD_GRACE_SECONDS:g} s to start); it was stopped",
        details={"timeout_seconds": timeout_seconds},
    )


def _child_main(sender: Connection, arguments: dict[str, Any]) -> None:
    """The child of :func:`run_offline_in_child`: lead a new process group, run, send back
    the result or the typed error (anything else propagates and ends the child non-zero)."""
    os.setpgid(0, 0)
    outcome: OfflineResult | ApportionError
    try:
        outcome = asyncio.run(run_offline(**arguments))
    except ApportionError as exc:
        outcome = exc
    sender.send(outcome)
    sender.close()
    os._exit(0)  # a policy thread past its timeout may still spin; do not wait for it


def _kill_group(child: multiprocessing.process.BaseProcess) -> None:
    """Kill the child's process group (its pgid is its PID, see :func:`_child_main`), then
    the child itself should it not have reached ``setpgid`` yet, and reap it."""
    pid = child.pid
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):  # not yet (or no longer) a group leader
        os.killpg(pid, signal.SIGKILL)
    child.kill()
    child.join()
