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

**One policy per worker.** A worker serves one policy URI for its whole life: a call of another
policy gets another worker (a new one, up to ``max_size``; else an idle worker of another
policy is replaced by a fresh one first). So a policy's globals, its patched worker and the
files in its private ``/tmp`` are seen by later calls of that policy only, never by another's.

**Fairness.** A call of a policy that has no call running may take any free place; a policy
that already has one may take another only while a place stays free for the others, and at
most ``per_policy`` at once. So one slow policy, or several, cannot keep a quick one waiting
while the pool has room to grow; with ``max_size`` places, ``max_size - 1`` slow policies run
while another is answered.
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
        max_size: int | None = None,
        limits: SandboxLimits = SandboxLimits(),
        code_roots: tuple[Path, ...] = (),
        unsandboxed: bool = False,
        per_policy: int | None = None,
    ) -> None:
        """``size``: workers started by :meth:`start`; ``max_size``: how many there may be when
        calls of several policies overlap (default ``size``). ``code_roots``: the directories
        that hold every policy's code (mounted read-only in each jail). ``unsandboxed``: the
        operator's explicit opt-in to run workers without a jail. ``per_policy``: calls of one
        URI in workers at once (default ``max(1, max_size - 1)``). Probes ``bwrap`` here (a
        fraction of a second) and logs what it found."""
        max_size = size if max_size is None else max_size
        if size < 1 or max_size < size:
            raise ValueError("a sandbox pool needs at least one worker, and max_size >= size")
        if per_policy is not None and per_policy < 1:
            raise ValueError("per_policy must be at least 1")
        self.limits = limits
        self.max_size = max_size
        self.per_policy = per_policy or max(1, max_size - 1)
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
        self._busy: set[Slot] = set()
        self._releasing: set[asyncio.Future[None]] = set()  # release tasks under way
        self._used: dict[Slot, int] = {}  # when each slot was last handed out (a counter)
        self._handouts = 0
        self._changed: asyncio.Condition | None = None
        self._closed = False

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def start(self) -> None:
        """Spawn ``size`` workers now (in threads; each is bound to the first policy it serves);
        raises Internal if one cannot start. Without a jail and without the opt-in there is
        nothing to start."""
        if self.refusal is not None:
            return
        await asyncio.gather(*(asyncio.to_thread(slot.warm) for slot in self._slots))

    async def close(self) -> None:
        """Kill every worker's process group by PID and reap it; later calls raise RuntimeError
        (and those waiting for a place)."""
        self._closed = True
        await asyncio.gather(*(asyncio.to_thread(slot.stop) for slot in list(self._slots)))
        changed = self._condition()
        async with changed:
            changed.notify_all()

    async def _run(
        self, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> tuple[dict[str, Any], float]:
        self._check(uri)
        slot = await self._acquire(uri)
        answer, elapsed_ms = await self._on(slot, uri, dict(request), services)
        _raise_for(uri, answer, self.limits.memory_mb)
        return answer, elapsed_ms

    async def _acquire(self, uri: str, *, only: Slot | None = None) -> Slot:
        """A place for a call of ``uri`` (``only``: that place, once it is free), marked busy;
        waits while :meth:`_pick` finds none (the module docstring's rules)."""
        changed = self._condition()
        async with changed:
            while True:
                if self._closed:
                    raise RuntimeError("the sandbox pool is closed")
                slot = self._pick(uri) if only is None else (None if only in self._busy else only)
                if slot is not None:
                    slot.policy = uri  # bound now: the next pick sees it
                    self._busy.add(slot)
                    self._handouts += 1
                    self._used[slot] = self._handouts
                    return slot
                await changed.wait()

    def _pick(self, uri: str) -> Slot | None:
        """The place a call of ``uri`` may take now, or None: its own idle worker; else an idle
        place no policy has used (a worker started by :meth:`start`); else a new place (under
        ``max_size``); else the idle place used longest ago (its worker is replaced before the
        call)."""
        running = sum(1 for slot in self._busy if slot.policy == uri)
        free = len(self._slots) - len(self._busy) + (self.max_size - len(self._slots))
        if running >= self.per_policy or (running and free <= 1):
            return None
        idle = [slot for slot in self._slots if slot not in self._busy]
        own = [slot for slot in idle if slot.policy == uri]
        if own:
            return own[0]
        unused = [slot for slot in idle if slot.policy is None]
        if unused:
            return unused[0]
        if len(self._slots) < self.max_size:
            slot = Slot(self.limits, self.jail)
            self._slots.append(slot)
            return slot
        return min(idle, key=lambda slot: self._used.get(slot, 0)) if idle else None

    async def _release(self, slot: Slot) -> None:
        changed = self._condition()
        async with changed:
            self._busy.discard(slot)
            changed.notify_all()

    def _check(self, uri: str) -> None:
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        if self.refusal is not None:
            raise PolicyError(
                f"policy {uri} was not run: non-built-in policies run only in the sandbox, and "
                f"there is none: {self.refusal}",
                details={"policy_rule_uri": uri, "sandbox": "unavailable"},
            )

    def _on(
        self, slot: Slot, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> asyncio.Future[tuple[dict[str, Any], float]]:
        """Run on ``slot`` (acquired for ``uri``) in a thread; the slot is released only when
        that thread is done, even if the awaiting task is cancelled meanwhile."""
        job = asyncio.ensure_future(asyncio.to_thread(slot.run, uri, request, services))

        def release(done: asyncio.Future[tuple[dict[str, Any], float]]) -> None:
            if not done.cancelled():
                done.exception()  # mark retrieved; the awaiting task re-raises it
            self._releasing.add(task := asyncio.ensure_future(self._release(slot)))
            task.add_done_callback(self._releasing.discard)

        job.add_done_callback(release)
        return asyncio.shield(job)

    async def _run_everywhere(
        self, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> dict[str, Any]:
        """Run ``request`` on every worker of ``uri``, one after the other, each once it is
        free (on one new worker when it has none); return the first answer."""
        self._check(uri)
        targets: list[Slot | None] = [slot for slot in self._slots if slot.policy == uri]
        answers = []
        for only in targets or [None]:
            slot = await self._acquire(uri, only=only)
            answer, _ = await self._on(slot, uri, dict(request), services)
            _raise_for(uri, answer, self.limits.memory_mb)
            answers.append(answer)
        return answers[0]

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
