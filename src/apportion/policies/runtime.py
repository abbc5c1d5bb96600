"""Running policies: built-ins in the server, every other policy in the sandbox.

``PolicyRuntime.place`` is the one way the server calls a built-in placement policy (the
internal protocol, :mod:`apportion.policies.protocol`): inline, with the server's fleet view and
nothing from the user's ``settings``. ``PolicyRuntime.evaluate`` is the one way it calls a
seed-contract policy's ``eval`` (uploaded, ``--policy-dir`` and the ``similarity`` built-in);
``management`` the one way it calls ``management``. The last two:

* merge parameters and settings the seed's documented way: the stored
  ``policy_parameters`` / ``policy_settings`` are defaults, the request's values
  override them key by key;
* run uploaded and ``--policy-dir`` policies only in the sandbox pool (whose workers inject
  ``cluster_client`` and ``cluster_metrics_client``, answered over the worker's pipe);
* pass the policy's persistent ``context`` (never ``None``) and keep what the
  policy left in it, in memory and in the ``policy_contexts`` table;
* keep "no" apart from "broken": a policy raising
  :class:`~apportion.errors.NoFeasiblePlacement` (the seed's way of saying no)
  is a rejection; any other exception is :class:`~apportion.errors.PolicyError`
  naming the policy (and so is a built-in's ``place`` raising).

Built-ins run inline on the event loop: they are bounded, vectorised work shipped with the
server. The sandbox bounds every other policy's wall clock (``SandboxLimits.timeout_seconds``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

from apportion import jsonutil
from apportion.engine.decisions import Outcome
from apportion.engine.requests import GpuRequest
from apportion.errors import ApportionError, PolicyError
from apportion.policies.clients import RegistryServices
from apportion.policies.sandbox.pool import SandboxCall, SandboxPool
from apportion.policies.store import PolicyEntry
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey
from apportion.store.db import Database
from apportion.store.repos.policies import PolicyRepo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    output: Any
    elapsed_ms: float


class PolicyRuntime:
    """Evaluates policies with merged parameters/settings, persistent context and limits."""

    def __init__(self, db: Database, services: RegistryServices, sandbox: SandboxPool) -> None:
        self._repo = PolicyRepo(db)
        self._services = services
        self._sandbox = sandbox
        self._contexts: dict[str, dict[str, Any]] = {}
        self._context_json: dict[str, bytes] = {}

    # ---------------------------------------------------------------- context
    async def context_for(self, uri: str) -> dict[str, Any]:
        """The policy's persistent context (loaded from the store on first use)."""
        context = self._contexts.get(uri)
        if context is None:
            stored = await self._repo.context(uri)
            raw = b"{}" if stored is None else stored.encode()
            context = jsonutil.loads(raw)
            self._contexts[uri] = context
            self._context_json[uri] = raw
        return context

    async def _save_context(self, uri: str, context: dict[str, Any]) -> None:
        try:
            raw = jsonutil.dumps(context)
        except TypeError as exc:
            raise PolicyError(
                f"policy {uri} left something that is not JSON in its context: {exc}; "
                "keep only JSON values (dicts, lists, strings, numbers) in context",
                details={"policy_rule_uri": uri},
            ) from None
        limit = self._sandbox.limits.max_context_bytes
        if len(raw) > limit:  # a worker enforces it too; this holds if the policy broke its worker
            raise PolicyError(
                f"policy {uri} left a context of {len(raw)} bytes, over the limit of {limit}"
                " bytes (the server's policy_context_max_bytes); it was not stored",
                details={"policy_rule_uri": uri, "bytes": len(raw), "limit": limit},
            )
        self._contexts[uri] = context
        if raw == self._context_json.get(uri):
            return
        self._context_json[uri] = raw
        await self._repo.put_context(uri, raw.decode(), time.time())

    async def check(self, entry: PolicyEntry) -> None:
        """Load an uploaded or ``--policy-dir`` policy in a sandbox worker and check the seed
        contract's signatures (at upload or reload, not halfway through a request); raises
        InvalidRequest (``path="code"``) naming what is wrong."""
        if entry.sandboxed:
            assert entry.code_dir is not None
            await self._sandbox.validate(entry.uri, entry.code_dir)

    # ---------------------------------------------------------------- merging
    def _merged(
        self, entry: PolicyEntry, parameters: dict[str, Any], settings: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        merged_parameters = {**entry.record.policy_parameters, **parameters}
        merged_settings = {**entry.record.policy_settings, **settings}
        return merged_parameters, merged_settings

    # ---------------------------------------------------------------- place
    @staticmethod
    def place(
        entry: PolicyEntry,
        fleet: FleetView,
        candidates: Sequence[str],
        requests: Sequence[GpuRequest],
        unavailable: Set[GpuKey] = frozenset(),
    ) -> Outcome:
        """Run a built-in placement policy (``entry.placer``) on the event loop. Built-ins are
        bounded, vectorised work (about 0.1 ms at 10,000 nodes, docs/performance.md): the
        hand-off to a thread would cost more than the policy. A policy that raises is
        :class:`PolicyError` naming it."""
        assert entry.placer is not None
        try:
            return entry.placer.place(fleet, candidates, requests, unavailable)
        except ApportionError:
            raise
        except Exception as exc:
            raise _policy_error(entry, exc) from None

    # ---------------------------------------------------------------- eval
    async def evaluate(
        self,
        entry: PolicyEntry,
        *,
        input_data: Any,
        parameters: dict[str, Any],
        settings: dict[str, Any],
        json_input: Any = None,
    ) -> Evaluation:
        """Run a seed-contract policy's ``eval``; ``json_input`` is what a sandboxed policy gets
        instead of ``input_data`` when given."""
        started = time.perf_counter()
        merged_parameters, merged_settings = self._merged(entry, parameters, settings)
        uses_context = entry.source != "builtin"
        context = await self.context_for(entry.uri) if uses_context else {}
        if entry.sandboxed:
            assert entry.code_dir is not None
            result = await self._sandbox.evaluate(
                SandboxCall(
                    uri=entry.uri,
                    code_dir=entry.code_dir,
                    rule_id=entry.uri,
                    settings=merged_settings,
                    parameters=merged_parameters,
                    input_data=json_input if json_input is not None else input_data,
                    context=context,
                ),
                self._services,
            )
            output, context = result.output, result.context
        else:
            policy = self._builtin(entry, merged_settings, merged_parameters)
            output = self._inline(entry, policy.eval, merged_parameters, input_data, context)
        if uses_context:
            await self._save_context(entry.uri, context)
        return Evaluation(output, (time.perf_counter() - started) * 1000)

    @staticmethod
    def _builtin(entry: PolicyEntry, settings: dict[str, Any], parameters: dict[str, Any]) -> Any:
        """A built-in's seed-contract object, built per call (built-ins are stateless; they read
        neither the clients nor any engine state)."""
        assert entry.policy_class is not None and entry.source == "builtin"
        return entry.policy_class(entry.uri, settings, parameters)

    @staticmethod
    def _inline(entry: PolicyEntry, fn: Any, *args: Any) -> Any:
        """Run a built-in seed-contract call on the event loop (as :meth:`place`)."""
        try:
            return fn(*args)
        except ApportionError:
            raise
        except Exception as exc:
            raise _policy_error(entry, exc) from None

    # ---------------------------------------------------------------- management
    async def management(self, entry: PolicyEntry, action: str, data: Any) -> Any:
        """Call the policy's ``management(action, data)`` with its stored settings and parameters."""
        parameters, settings = self._merged(entry, {}, {})
        if entry.sandboxed:
            assert entry.code_dir is not None
            call = SandboxCall(
                uri=entry.uri,
                code_dir=entry.code_dir,
                rule_id=entry.uri,
                settings=settings,
                parameters=parameters,
                input_data=None,
                context=await self.context_for(entry.uri),
            )
            return await self._sandbox.management(call, action, data)
        policy = self._builtin(entry, settings, parameters)
        manage = getattr(policy, "management", None)
        if manage is None:
            raise PolicyError(
                f"policy {entry.uri} has no management method",
                details={"policy_rule_uri": entry.uri, "action": action},
            )
        return self._inline(entry, manage, action, data)


def _policy_error(entry: PolicyEntry, exc: Exception) -> PolicyError:
    """A policy's exception as the error that names the policy (call inside ``except``)."""
    return PolicyError(
        f"policy {entry.uri} raised {type(exc).__name__}: {exc}",
        details={
            "policy_rule_uri": entry.uri,
            "exception_type": type(exc).__name__,
            "exception": str(exc),
            "traceback": traceback.format_exc(limit=8),
        },
    )
