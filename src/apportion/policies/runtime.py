"""Running policies: in-process for trusted code, in sandbox workers for uploads.

``PolicyRuntime.place`` is the one way the server calls a built-in placement policy (the
internal protocol, :mod:`apportion.policies.protocol`): inline, with the server's fleet view and
nothing from the user's ``settings``. ``PolicyRuntime.evaluate`` is the one way it calls a
seed-contract policy's ``eval`` (uploaded, ``--policy-dir`` and the ``similarity`` built-in);
``management`` the one way it calls ``management``. The last two:

* merge parameters and settings the seed's documented way: the stored
  ``policy_parameters`` / ``policy_settings`` are defaults, the request's values
  override them key by key;
* inject ``cluster_client`` and ``cluster_metrics_client`` into ``settings``;
* pass the policy's persistent ``context`` (never ``None``) and keep what the
  policy left in it, in memory and in the ``policy_contexts`` table;
* keep "no" apart from "broken": a policy raising
  :class:`~apportion.errors.NoFeasiblePlacement` (the seed's way of saying no)
  is a rejection; any other exception is :class:`~apportion.errors.PolicyError`
  naming the policy (and so is a built-in's ``place`` raising).

In-process policies run on a worker thread with the same wall-clock timeout as
the sandbox; a trusted policy past it is answered ``PolicyTimeout`` but its
thread cannot be stopped (operator-trusted code only, see docs/policies.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import traceback
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

from apportion import jsonutil
from apportion.engine.decisions import Outcome
from apportion.engine.requests import GpuRequest
from apportion.errors import ApportionError, PolicyError, PolicyTimeout
from apportion.policies.clients import ClusterClient, ClusterMetricsClient, RegistryServices
from apportion.policies.sandbox.pool import SandboxCall, SandboxPool
from apportion.policies.store import PolicyEntry
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey
from apportion.store.db import Database
from apportion.store.repos.policies import PolicyRepo

log = logging.getLogger(__name__)

MAX_INSTANCES = 64  # in-process operator policy objects kept (least recently built dropped)
_INJECTED = ("cluster_client", "cluster_metrics_client")


def _stable_json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True)
class Evaluation:
    output: Any
    elapsed_ms: float


class PolicyRuntime:
    """Evaluates policies with merged parameters/settings, persistent context and limits."""

    def __init__(
        self,
        db: Database,
        services: RegistryServices,
        sandbox: SandboxPool,
        *,
        timeout_seconds: float,
    ) -> None:
        self._repo = PolicyRepo(db)
        self._services = services
        self._sandbox = sandbox
        self.timeout_seconds = timeout_seconds
        self._contexts: dict[str, dict[str, Any]] = {}
        self._context_json: dict[str, bytes] = {}
        self._instances: dict[tuple[str, int, str, str], Any] = {}
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="policy"
        )

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

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
        self._contexts[uri] = context
        if raw == self._context_json.get(uri):
            return
        self._context_json[uri] = raw
        await self._repo.put_context(uri, raw.decode(), time.time())

    async def check(self, entry: PolicyEntry) -> None:
        """Load an uploaded policy in a sandbox worker and check the seed contract's
        signatures (at upload, not halfway through a request)."""
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

    def _inject_clients(self, settings: dict[str, Any]) -> None:
        settings["cluster_client"] = ClusterClient(self._services)
        settings["cluster_metrics_client"] = ClusterMetricsClient(self._services)

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
            policy = self._instance(entry, merged_settings, merged_parameters)
            if entry.source == "builtin":
                output = self._inline(entry, policy.eval, merged_parameters, input_data, context)
            else:
                output = await self._in_thread(
                    entry, policy.eval, merged_parameters, input_data, context
                )
        if uses_context:
            await self._save_context(entry.uri, context)
        return Evaluation(output, (time.perf_counter() - started) * 1000)

    def _instance(
        self, entry: PolicyEntry, settings: dict[str, Any], parameters: dict[str, Any]
    ) -> Any:
        """The seed-contract object for these construction arguments.

        Built-ins are built per call (stateless; they read neither the clients nor any
        engine state). Operator policies keep one object per (URI, settings, parameters) — the
        one policy instance cache of the server, as the sandbox worker keeps its own — so
        state a ``management`` action leaves on the object is seen by later ``eval`` calls
        with the same arguments (the seed's long-lived object)."""
        assert entry.policy_class is not None
        if entry.source == "builtin":
            return entry.policy_class(entry.uri, settings, parameters)
        self._inject_clients(settings)
        key = (
            entry.uri,
            id(entry.policy_class),
            _stable_json({k: v for k, v in settings.items() if k not in _INJECTED}),
            _stable_json(parameters),
        )
        policy = self._instances.get(key)
        if policy is None:
            policy = entry.policy_class(entry.uri, settings, parameters)
            self._instances[key] = policy
            while len(self._instances) > MAX_INSTANCES:
                self._instances.pop(next(iter(self._instances)))
        return policy

    @staticmethod
    def _inline(entry: PolicyEntry, fn: Any, *args: Any) -> Any:
        """Run a built-in seed-contract call on the event loop (as :meth:`place`)."""
        try:
            return fn(*args)
        except ApportionError:
            raise
        except Exception as exc:
            raise _policy_error(entry, exc) from None

    async def _in_thread(self, entry: PolicyEntry, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, fn, *args)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await future
        except TimeoutError:
            raise PolicyTimeout(
                f"policy {entry.uri} did not answer within {self.timeout_seconds:g} s "
                "(--policy-timeout); make it faster or raise the limit",
                details={"policy_rule_uri": entry.uri, "timeout_seconds": self.timeout_seconds},
            ) from None
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
        policy = self._instance(entry, settings, parameters)
        manage = getattr(policy, "management", None)
        if manage is None:
            raise PolicyError(
                f"policy {entry.uri} has no management method",
                details={"policy_rule_uri": entry.uri, "action": action},
            )
        return await self._in_thread(entry, manage, action, data)


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
