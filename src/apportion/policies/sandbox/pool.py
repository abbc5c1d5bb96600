"""A pool of sandbox worker processes that evaluate untrusted seed-format policies.

The engine calls :meth:`SandboxPool.evaluate` for every uploaded policy; uploaded code never runs
in the server. Each worker (``worker.py``) is spawned with an argv list, a clean minimal
environment (nothing of the server's, no ``APPORTION_*``), a private temporary cwd, its own
session (so a kill takes its children too), and resource limits it sets on itself. Its stdin and
stdout carry the private protocol; its stderr is drained by a thread into the logger
``apportion.policies.sandbox.pool`` (DEBUG), so a chatty policy can never block it. The parent's
handle on one worker process is in ``handle.py``, the slot that replaces a failed
worker in ``slot.py``; this module is the pool API.

Each exchange runs in a thread (``asyncio.to_thread``) over non-blocking pipes with a wall-clock
deadline, so the event loop never blocks. :class:`SandboxServices` methods are called from that
thread, never from the event loop: they must be thread-safe and must not touch the loop (answer
from a snapshot). A timeout kills the worker's process group and raises :class:`PolicyTimeout`; a
dead worker raises :class:`PolicyError` saying how it ended; either way the worker is reaped and
replaced at once. A policy exception is a :class:`PolicyError` and the worker lives on.

This is containment, not a security boundary: workers run as the server's user, may read what it
may read and may use the network. Run the server as a dedicated user or in a container when
untrusted authors can upload policies.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from apportion.errors import InvalidRequest, PolicyError
from apportion.policies.loader import PolicySignature
from apportion.policies.sandbox.slot import Slot


class SandboxServices(Protocol):
    """What a policy's injected clients reach, answered in the parent (from the exchange thread)."""

    def read_cluster(self, cluster_id: str) -> tuple[bool, Any]: ...
    def execute_query(self, query: Any) -> tuple[bool, Any]: ...
    def get_cluster_metrics(self, cluster_id: str) -> Any: ...  # raise LookupError if unknown
    def query_cluster_metrics(self, query: Any) -> list[Any]: ...


@dataclass(frozen=True)
class SandboxLimits:
    """Per-worker limits: address space, CPU seconds per worker life, wall clock per call."""

    memory_mb: int = 1024
    cpu_seconds: int = 60
    timeout_seconds: float = 10.0
    max_message_bytes: int = 64 * 2**20


@dataclass(frozen=True)
class SandboxCall:
    """One policy invocation: which policy (URI and unpacked code) and its seed arguments."""

    uri: str
    code_dir: Path
    rule_id: str
    settings: dict[str, Any]
    parameters: dict[str, Any]
    input_data: Any
    context: dict[str, Any]


@dataclass(frozen=True)
class SandboxResult:
    """The policy's output, its context after eval, and the wall time of the exchange."""

    output: Any
    context: dict[str, Any]
    elapsed_ms: float


def _raise_for(uri: str, answer: dict[str, Any], memory_mb: int) -> None:
    """Turn a worker's error frame into the typed error the caller sees."""
    if answer.get("op") != "error":
        return
    phase, kind, text = answer.get("phase"), str(answer.get("type")), str(answer.get("message"))
    details = {
        "policy_rule_uri": uri,
        "exception_type": kind,
        "exception": text,
        "traceback": str(answer.get("traceback", "")),
    }
    if phase == "no-management":
        raise InvalidRequest(
            f"policy {uri} has no management(action, data) method", path="action", details=details
        )
    messages = {
        "load": f"policy {uri} could not be loaded: {text}",
        "init": f"policy {uri} raised {kind} in __init__: {text}",
        "serialize": f"policy {uri} returned output or context that is not JSON-serialisable "
        f"({kind}: {text}); return dicts, lists, strings, numbers, booleans and None",
        "size": f"policy {uri} returned too much data: {text}",
    }
    if kind == "MemoryError":
        messages[str(phase)] = (
            f"policy {uri} ran out of memory (MemoryError; the sandbox limit is {memory_mb} MB)"
        )
    message = messages.get(str(phase), f"policy {uri} raised {kind}: {text}")
    raise PolicyError(message, details=details)


class SandboxPool:
    """A fixed number of worker slots shared by every sandboxed policy evaluation.

    Owned by the application: ``await start()`` at start-up (optional: slots also start lazily),
    ``await close()`` at shutdown. ``evaluate`` and ``management`` wait for a free worker when all
    are busy. Every exchange runs in a thread with the wall-clock limit ``timeout_seconds``.
    """

    def __init__(self, *, size: int = 2, limits: SandboxLimits = SandboxLimits()) -> None:
        if size < 1:
            raise ValueError("a sandbox pool needs at least one worker")
        self.limits = limits
        self._slots = [Slot(limits) for _ in range(size)]
        self._idle: asyncio.Queue[Slot] | None = None
        self._closed = False
        self._broadcast: asyncio.Lock | None = None

    def _queue(self) -> asyncio.Queue[Slot]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for slot in self._slots:
                self._idle.put_nowait(slot)
        return self._idle

    async def start(self) -> None:
        """Spawn every worker now (in threads); raises Internal if one cannot start."""
        self._queue()
        await asyncio.gather(*(asyncio.to_thread(slot.warm) for slot in self._slots))

    async def close(self) -> None:
        """Kill every worker's process group by PID and reap it; later calls raise RuntimeError."""
        self._closed = True
        await asyncio.gather(*(asyncio.to_thread(slot.stop) for slot in self._slots))

    async def _run(
        self, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> tuple[dict[str, Any], float]:
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        idle = self._queue()
        slot = await idle.get()
        answer, elapsed_ms = await self._on(slot, uri, dict(request), services)
        _raise_for(uri, answer, self.limits.memory_mb)
        return answer, elapsed_ms

    def _on(
        self, slot: Slot, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> asyncio.Future[tuple[dict[str, Any], float]]:
        """Run on ``slot`` in a thread; the slot goes back to the idle queue only when that
        thread is done, even if the awaiting task is cancelled meanwhile."""
        idle = self._queue()
        job = asyncio.ensure_future(asyncio.to_thread(slot.run, uri, request, services))

        def release(done: asyncio.Future[tuple[dict[str, Any], float]]) -> None:
            if not done.cancelled():
                done.exception()  # mark retrieved; the awaiting task re-raises it
            idle.put_nowait(slot)

        job.add_done_callback(release)
        return asyncio.shield(job)

    async def _run_everywhere(
        self, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> dict[str, Any]:
        """Run ``request`` on every worker (all of them, once each); return the first answer."""
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        if self._broadcast is None:
            self._broadcast = asyncio.Lock()
        idle = self._queue()
        async with self._broadcast:  # two broadcasts never hold half the slots each
            slots: list[Slot] = []
            try:
                while len(slots) < len(self._slots):
                    slots.append(await idle.get())
            except asyncio.CancelledError:
                for slot in slots:
                    idle.put_nowait(slot)
                raise
            jobs = [self._on(slot, uri, dict(request), services) for slot in slots]
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            _raise_for(uri, outcome[0], self.limits.memory_mb)
        first = outcomes[0]
        assert not isinstance(first, BaseException)
        return first[0]

    async def evaluate(self, call: SandboxCall, services: SandboxServices) -> SandboxResult:
        """Run ``eval(parameters, input_data, context)`` of ``call``'s policy in a worker.

        Called by the engine for every sandboxed policy evaluation. Returns the output and the
        context as the policy left it. Raises PolicyTimeout (over ``timeout_seconds``),
        PolicyError (the policy raised, could not be loaded, returned non-JSON data, or its
        worker died), MessageTooLarge (the input is over ``max_message_bytes``).
        """
        request = _request("eval", call)
        request.update(input_data=call.input_data, context=call.context)
        answer, elapsed_ms = await self._run(call.uri, request, services)
        context = answer.get("context")
        return SandboxResult(
            output=answer.get("output"),
            context=context if isinstance(context, dict) else {},
            elapsed_ms=elapsed_ms,
        )

    async def management(
        self,
        call: SandboxCall,
        action: str,
        data: Any,
        services: SandboxServices | None = None,
    ) -> Any:
        """Call the policy's ``management(action, data)`` on every worker; return the answer.

        Called for ``POST /policies/{uri}/management`` and the WebSocket ``management`` message.
        Each worker keeps its own policy object (per URI, rule id, settings and parameters), so
        the action goes to all of them, in turn waiting until each is free; the first worker's
        answer is returned. A replaced worker starts with a fresh object: state that must last
        belongs in ``context``. ``call.input_data`` and ``call.context`` are not used. Raises
        InvalidRequest (``path="action"``) when the policy has no ``management``, else as
        :meth:`evaluate`.
        """
        request = _request("management", call)
        request.update(action=action, data=data)
        answer = await self._run_everywhere(call.uri, request, services)
        return answer.get("output")

    async def validate(self, uri: str, code_dir: Path) -> PolicySignature:
        """Import freshly uploaded code in a worker and check its class (the upload path).

        Called by the policy store before it accepts an upload, so uploaded code is never
        imported in the server. Raises InvalidRequest (``path="code"``) naming what is wrong.
        """
        request: dict[str, Any] = {
            "op": "validate",
            "uri": uri,
            "code_dir": _absolute(code_dir),
        }
        try:
            answer, _ = await self._run(uri, request, None)
        except PolicyError as exc:
            raise InvalidRequest(exc.message, path="code", details=exc.details) from None
        output = answer.get("output") or {}
        return PolicySignature(has_management=bool(output.get("has_management")))


def _request(op: str, call: SandboxCall) -> dict[str, Any]:
    return {
        "op": op,
        "uri": call.uri,
        "code_dir": _absolute(call.code_dir),
        "rule_id": call.rule_id,
        "settings": call.settings,
        "parameters": call.parameters,
    }


def _absolute(path: Path) -> str:
    """The worker runs in its own cwd, so it gets absolute paths (no filesystem access here)."""
    return os.path.abspath(path)
