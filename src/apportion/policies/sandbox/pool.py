"""A pool of sandbox worker processes that evaluate untrusted seed-format policies.

The engine calls :meth:`SandboxPool.evaluate` for every non-built-in policy; that code never runs
in the server. Each worker (``worker.py``) is started inside a ``bwrap`` jail (``jail.py``): its
own unprivileged uid/gid (the ``apportion-sandbox`` user), new PID/network/IPC/UTS namespaces,
read-only code and runtime, a size-limited private tmpfs as its only writable place, and
resource limits it sets on itself. Its stdin and stdout carry the private protocol; its stderr
is drained by a thread into the logger ``apportion.policies.sandbox.pool`` (DEBUG), so a chatty
policy can never block it. The parent's handle on one worker process is in ``handle.py``, the
slot that replaces a failed worker in ``slot.py``; this module is the pool API.

When no jail can be built (``bwrap`` or the user missing, namespaces forbidden) the pool refuses
every call with :class:`PolicyError` naming what to install, unless it was built with
``unsandboxed=True`` (``APPORTION_UNSANDBOXED_POLICIES``): then workers run as the server's
user with only a clean environment and rlimits, which is containment, not a security boundary.

Each exchange runs in a thread (``asyncio.to_thread``) over non-blocking pipes with a wall-clock
deadline, so the event loop never blocks. :class:`SandboxServices` methods are called from that
thread, never from the event loop: they must be thread-safe and must not touch the loop (answer
from a snapshot). A timeout kills the worker (and its PID namespace) and raises
:class:`PolicyTimeout`; a dead worker raises :class:`PolicyError` saying how it ended; either way
the worker is reaped and replaced at once. A policy exception is a :class:`PolicyError` and the
worker lives on. A call that leaves a process behind costs its worker: it is replaced after it.

At most ``per_policy`` calls of one policy URI are in a worker at a time (default: all workers
but one), so a slow policy cannot take every worker; its further calls wait for their turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from apportion.errors import InvalidRequest, PolicyError
from apportion.policies.loader import PolicySignature
from apportion.policies.sandbox.jail import Jail, JailUnavailable, find_jail
from apportion.policies.sandbox.slot import Slot

logger = logging.getLogger(__name__)


class SandboxServices(Protocol):
    """What a policy's injected clients reach, answered in the parent (from the exchange thread)."""

    def read_cluster(self, cluster_id: str) -> tuple[bool, Any]: ...
    def execute_query(self, query: Any) -> tuple[bool, Any]: ...
    def get_cluster_metrics(self, cluster_id: str) -> Any: ...  # raise LookupError if unknown
    def query_cluster_metrics(self, query: Any) -> list[Any]: ...


@dataclass(frozen=True)
class SandboxLimits:
    """Per-worker limits: address space per process, CPU seconds per worker life, wall clock per
    call, the largest input frame, the largest answer (a policy's output) and the largest
    context a policy may leave; jailed workers also: the private tmpfs (MB) and the process cap
    (the worker's own ``pids`` cgroup; without cgroups, RLIMIT_NPROC of the sandbox user)."""

    memory_mb: int = 1024
    cpu_seconds: int = 60
    timeout_seconds: float = 10.0
    max_message_bytes: int = 64 * 2**20
    max_answer_bytes: int = 2**20
    max_context_bytes: int = 256 * 2**10
    tmp_mb: int = 64
    max_processes: int = 32

    @property
    def max_reply_frame(self) -> int:
        """The largest frame a worker may send: an answer and a context at their limits, with
        room for the frame's own fields (an error's traceback). A bigger one is refused at its
        header, before a byte of it is read."""
        return self.max_answer_bytes + self.max_context_bytes + 64 * 2**10


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

    def __init__(
        self,
        *,
        size: int = 2,
        limits: SandboxLimits = SandboxLimits(),
        code_roots: tuple[Path, ...] = (),
        unsandboxed: bool = False,
        per_policy: int | None = None,
    ) -> None:
        """``code_roots``: the directories that hold every policy's code (mounted read-only in
        each jail). ``unsandboxed``: the operator's explicit opt-in to run workers without a
        jail. ``per_policy``: calls of one URI in workers at once (default ``max(1, size-1)``).
        Probes ``bwrap`` here (a fraction of a second) and logs what it found."""
        if size < 1:
            raise ValueError("a sandbox pool needs at least one worker")
        if per_policy is not None and per_policy < 1:
            raise ValueError("per_policy must be at least 1")
        self.limits = limits
        self.per_policy = per_policy or max(1, size - 1)
        self.jail: Jail | None = None
        self.refusal: str | None = None  # why every call is refused (no jail, no opt-in)
        if unsandboxed:
            logger.warning(
                "APPORTION_UNSANDBOXED_POLICIES is set: uploaded and --policy-dir policies run "
                "WITHOUT a sandbox, as the server's user, with network and file access"
            )
        else:
            try:
                self.jail = find_jail(code_roots)
            except JailUnavailable as exc:
                self.refusal = str(exc)
                logger.error("non-built-in policies will be refused: %s", exc)
        self._slots = [Slot(limits, self.jail) for _ in range(size)]
        self._turns: dict[str, asyncio.Semaphore] = {}
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
        """Spawn every worker now (in threads); raises Internal if one cannot start. Without
        a jail and without the opt-in there is nothing to start."""
        self._queue()
        if self.refusal is not None:
            return
        await asyncio.gather(*(asyncio.to_thread(slot.warm) for slot in self._slots))

    async def close(self) -> None:
        """Kill every worker's process group by PID and reap it; later calls raise RuntimeError."""
        self._closed = True
        await asyncio.gather(*(asyncio.to_thread(slot.stop) for slot in self._slots))

    async def _run(
        self, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> tuple[dict[str, Any], float]:
        self._check(uri)
        idle = self._queue()
        async with self._turn(uri):
            slot = await idle.get()
            answer, elapsed_ms = await self._on(slot, uri, dict(request), services)
        _raise_for(uri, answer, self.limits.memory_mb)
        return answer, elapsed_ms

    def _check(self, uri: str) -> None:
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        if self.refusal is not None:
            raise PolicyError(
                f"policy {uri} was not run: non-built-in policies run only in the sandbox, and "
                f"there is none: {self.refusal}",
                details={"policy_rule_uri": uri, "sandbox": "unavailable"},
            )

    def _turn(self, uri: str) -> asyncio.Semaphore:
        """The semaphore that admits ``per_policy`` calls of ``uri`` at a time."""
        turn = self._turns.get(uri)
        if turn is None:
            turn = self._turns[uri] = asyncio.Semaphore(self.per_policy)
        return turn

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
        self._check(uri)
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
