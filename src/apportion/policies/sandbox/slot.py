"""Sandbox slots: the places of the pool, each holding at most one live worker, replacing it when
it fails.

The layer under :class:`apportion.policies.sandbox.pool.SandboxPool`; the worker process itself (spawn,
frames, kill) is :class:`~apportion.policies.sandbox.handle.WorkerHandle`.

:class:`Slot` is what the pool hands to an exchange thread: :meth:`Slot.run` does one exchange on
its worker with the wall-clock deadline, answers the worker's client calls from the given
:class:`~apportion.policies.sandbox.pool.SandboxServices` on that thread, and on a timeout, death or
protocol breach kills the worker's process group, reaps it and replaces it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from apportion.errors import Internal, InvalidRequest, MessageTooLarge, PolicyError, PolicyTimeout
from apportion.policies.sandbox.handle import (
    WorkerGarbled,
    WorkerGone,
    WorkerHandle,
    WorkerTimeout,
    encode_frame,
)
from apportion.policies.sandbox.worker import HEADER

if TYPE_CHECKING:
    from apportion.policies.sandbox.jail import Jail
    from apportion.policies.sandbox.pool import SandboxLimits, SandboxServices

# The pool's documented logger name: worker restarts are logged under it.
logger = logging.getLogger("apportion.policies.sandbox.pool")

CPU_RECYCLE_FRACTION = 0.75  # restart a worker once it has used this much of its CPU budget


class Slot:
    """A place in the pool: holds at most one live worker and replaces it when it fails.

    Created by :class:`~apportion.policies.sandbox.pool.SandboxPool`, one per worker. ``warm`` and
    ``run`` are called from the pool's threads, one thread per slot at a time; ``stop`` may come
    from another thread while ``run`` is in progress and makes it end with :class:`PolicyError`.
    ``run`` raises PolicyTimeout, PolicyError, InvalidRequest (arguments not JSON) or
    MessageTooLarge, and returns the worker's ``result`` or ``error`` frame with the wall time.
    """

    def __init__(self, limits: SandboxLimits, jail: Jail | None) -> None:
        self.limits = limits
        self.jail = jail
        self.policy: str | None = None  # the URI this place serves (set by the pool on the loop)
        self.worker: WorkerHandle | None = None
        self._serving: str | None = None  # the URI the live worker has served (thread side)
        self.closed = False
        self.busy = False  # an exchange thread owns the worker (its pipes) right now
        self.lock = threading.Lock()

    def warm(self) -> None:
        with self.lock:
            if not self.closed and self.worker is None:
                self.worker = WorkerHandle(self.limits, self.jail)

    def stop(self) -> None:
        with self.lock:
            self.closed = True
            worker, self.worker, busy = self.worker, None, self.busy
        if worker is not None and busy:
            worker.kill()  # the exchange thread sees end of stream and closes the pipes
        elif worker is not None:
            worker.close()

    def _replace(self, worker: WorkerHandle) -> str:
        how = worker.close()
        with self.lock:
            if self.worker is worker:
                self.worker = None
                self._serving = None
        try:
            self.warm()
        except Internal as exc:  # retried on the next call
            logger.error("sandbox worker restart failed: %s", exc.message)
        return how

    def _encode(self, uri: str, request: dict[str, Any]) -> bytes:
        try:
            data = encode_frame(request)
        except TypeError as exc:
            raise InvalidRequest(
                f"the settings, parameters, input or context for policy {uri} are not JSON: {exc}"
            ) from None
        if len(data) - HEADER.size > self.limits.max_message_bytes:
            raise MessageTooLarge(
                f"the input for policy {uri} is {len(data)} bytes, over the sandbox limit of "
                f"{self.limits.max_message_bytes} bytes; narrow the candidate clusters",
                details={"policy_rule_uri": uri, "bytes": len(data)},
            )
        return data

    def run(
        self, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> tuple[dict[str, Any], float]:
        """One exchange on this slot's worker (thread side); a worker that served another
        policy is replaced by a fresh one first (one policy per worker: no globals, patched
        code or ``/tmp`` files of another policy). Raises PolicyTimeout/PolicyError."""
        with self.lock:
            stale = self.worker if self._serving not in (None, uri) else None
        if stale is not None:
            self._replace(stale)
        self.warm()
        with self.lock:
            worker = self.worker
            self.busy = worker is not None
            self._serving = uri
        if worker is None:
            raise PolicyError("the sandbox pool is closed", details={"policy_rule_uri": uri})
        try:
            return self._exchange(worker, uri, request, services)
        finally:
            with self.lock:
                self.busy = False
                orphaned = self.worker is not worker
            if orphaned:  # replaced, or stopped by close() while we ran
                worker.close()

    def _exchange(
        self,
        worker: WorkerHandle,
        uri: str,
        request: dict[str, Any],
        services: SandboxServices | None,
    ) -> tuple[dict[str, Any], float]:
        request["id"] = next(worker.ids)
        data = self._encode(uri, request)
        started = time.monotonic()
        try:
            answer = worker.exchange(request["id"], data, services)
        except WorkerTimeout:
            self._replace(worker)
            limit = self.limits.timeout_seconds
            raise PolicyTimeout(
                f"policy {uri} ran longer than the limit of {limit} s and was stopped",
                details={"policy_rule_uri": uri, "timeout_seconds": limit},
            ) from None
        except (WorkerGone, WorkerGarbled) as exc:
            tail = list(worker.tail)[-5:]
            how = self._replace(worker)
            if isinstance(exc, WorkerGarbled):
                how = f"broke the protocol ({exc}) and was stopped"
            if self.closed:
                how = "was stopped because the sandbox pool closed"
            logger.warning("sandbox worker for %s %s; stderr tail: %s", uri, how, tail)
            raise PolicyError(
                f"the sandbox worker running policy {uri} {how}; it has been replaced",
                details={"policy_rule_uri": uri, "worker_exit": how},
            ) from None
        elapsed_ms = (time.monotonic() - started) * 1000.0
        worn = worker.cpu > CPU_RECYCLE_FRACTION * self.limits.cpu_seconds
        # validate ran freshly uploaded top-level code: do not let it share a worker afterwards;
        # a call that left a process or thread behind ends with its worker (and PID namespace)
        spawned = bool(answer.get("spawned")) or worker.left_running()
        if worn or spawned or answer.get("type") == "MemoryError" or request["op"] == "validate":
            self._replace(worker)
        return answer, elapsed_ms
