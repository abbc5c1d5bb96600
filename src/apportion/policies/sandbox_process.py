"""Sandbox worker processes and the slots that hold them: spawn, exchange frames, kill, replace.

The layer under :class:`apportion.policies.sandbox.SandboxPool`. Each worker (``sandbox_worker.py``)
is spawned with an argv list, a clean minimal environment (nothing of the server's, no
``APPORTION_*``), a private temporary cwd, its own session (so a kill takes its children too), and
resource limits it sets on itself. Its stdin and stdout carry the private protocol; its stderr is
drained by a thread into the logger ``apportion.policies.sandbox`` (DEBUG), so a chatty policy can
never block it.

:class:`Slot` is what the pool hands to an exchange thread: :meth:`Slot.run` does one exchange on
its worker with the wall-clock deadline, answers the worker's client calls from the given
:class:`~apportion.policies.sandbox.SandboxServices` on that thread, and on a timeout, death or
protocol breach kills the worker's process group, reaps it and replaces it at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from apportion import jsonutil
from apportion.errors import Internal, InvalidRequest, MessageTooLarge, PolicyError, PolicyTimeout
from apportion.policies.sandbox_worker import HEADER

if TYPE_CHECKING:
    from apportion.policies.sandbox import SandboxLimits, SandboxServices

# The pool's documented logger name: worker stderr and restarts are logged under it.
logger = logging.getLogger("apportion.policies.sandbox")

WORKER_MODULE = "apportion.policies.sandbox_worker"
STARTUP_SECONDS = 30.0
CPU_RECYCLE_FRACTION = 0.75  # restart a worker once it has used this much of its CPU budget
# Fixed values, never copied from the server's environment. One BLAS/OpenMP thread: a worker runs
# one policy at a time, and thread pools sized to the machine would eat the address-space limit.
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class _Timeout(Exception):
    pass


class _Gone(Exception):
    pass


class _Garbled(Exception):
    pass


def _frame(obj: Any) -> bytes:
    body = jsonutil.dumps(obj)
    return HEADER.pack(len(body)) + body


def _describe(returncode: int | None, limits: SandboxLimits) -> str:
    if returncode is None:
        return "did not exit"
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = {
        "SIGXCPU": f" (CPU limit of {limits.cpu_seconds} s)",
        "SIGSEGV": " (crashed)",
        "SIGXFSZ": " (file size limit)",
    }.get(name, "")
    return f"was killed by {name}{hint}"


class _Worker:
    """One worker process and its pipes. Used by one exchange thread at a time."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self.cwd = tempfile.mkdtemp(prefix="apportion-sandbox-")
        argv = [sys.executable, "-I", "-B", "-m", WORKER_MODULE]
        argv += ["--memory-mb", str(limits.memory_mb), "--cpu-seconds", str(limits.cpu_seconds)]
        argv += ["--max-message-bytes", str(limits.max_message_bytes)]
        env = dict(_ENV, HOME=self.cwd, TMPDIR=self.cwd)
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            shutil.rmtree(self.cwd, ignore_errors=True)
            raise Internal(f"a sandbox worker could not be started: {exc}") from None
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)
        self.buffer = bytearray()
        self.tail: deque[str] = deque(maxlen=20)
        self.cpu = 0.0
        self.ids = itertools.count(1)
        self._lock = threading.Lock()
        self._drainer = threading.Thread(
            target=self._drain, name=f"sandbox-stderr-{self.proc.pid}", daemon=True
        )
        self._drainer.start()
        try:
            ready = self.read(time.monotonic() + STARTUP_SECONDS)
        except (_Timeout, _Gone, _Garbled) as exc:
            how = self.kill()
            raise Internal(f"a sandbox worker failed to start ({how}): {exc}") from None
        if not (isinstance(ready, dict) and ready.get("op") == "ready"):
            self.kill()
            raise Internal(f"a sandbox worker sent {ready!r} instead of ready")

    def _drain(self) -> None:
        """Copy the worker's stderr to the log, line by line, cutting long lines."""
        assert self.proc.stderr
        fd, partial = self.proc.stderr.fileno(), b""
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 1 << 16):
                *lines, partial = (partial + chunk).split(b"\n")
                partial = partial[:4096]
                for line in lines:
                    text = line[:4096].decode(errors="replace")
                    self.tail.append(text)
                    logger.debug("sandbox worker %d: %s", self.proc.pid, text)
        self.proc.stderr.close()

    def write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self.wfd, select.POLLOUT)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if not poller.poll(remaining * 1000):
                continue
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                continue
            except OSError as exc:  # BrokenPipeError: the worker is gone
                raise _Gone(str(exc)) from None

    def read(self, deadline: float) -> Any:
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        while True:
            if len(self.buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buffer)
                if size > self.limits.max_message_bytes:
                    limit = self.limits.max_message_bytes
                    raise _Garbled(f"a frame of {size} bytes is over the limit of {limit}")
                end = HEADER.size + size
                if len(self.buffer) >= end:
                    body = bytes(self.buffer[HEADER.size : end])
                    del self.buffer[:end]
                    try:
                        return jsonutil.loads(body)
                    except Exception as exc:
                        raise _Garbled(f"a frame is not JSON ({exc})") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise _Gone("end of stream")
            self.buffer += chunk

    def kill(self) -> str:
        """SIGKILL the process group, reap the worker, remove its cwd; say how it ended.

        Safe from any thread and more than once. The pipes stay open (another thread may be
        polling them; it sees end of stream), :meth:`close` closes them.
        """
        with self._lock:
            if self.proc.returncode is None:  # not reaped yet, so the pid (pgid) is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            shutil.rmtree(self.cwd, ignore_errors=True)
            return _describe(self.proc.returncode, self.limits)

    def close(self) -> str:
        """Kill, then close the protocol pipes; only from the thread that owns the worker."""
        how = self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return how

    def exchange(
        self, request_id: int, data: bytes, services: SandboxServices | None
    ) -> dict[str, Any]:
        """Send the request frame, answer the worker's calls, return its result or error frame."""
        deadline = time.monotonic() + self.limits.timeout_seconds
        self.write(data, deadline)
        while True:
            frame = self.read(deadline)
            op = frame.get("op") if isinstance(frame, dict) else None
            if op == "call":
                self.write(_answer_call(services, frame), deadline)
            elif op in ("result", "error") and frame.get("id") == request_id:
                self.cpu = float(frame.get("cpu") or 0.0)
                return dict(frame)
            else:
                raise _Garbled(f"unexpected frame {str(frame)[:200]!r}")


def _answer_call(services: SandboxServices | None, frame: dict[str, Any]) -> bytes:
    """Run one client call against ``services`` and encode the reply frame."""
    method, args = frame.get("method"), frame.get("args") or [None]
    reply: dict[str, Any] = {"op": "reply", "id": frame.get("id"), "ok": True}
    try:
        if services is None:
            raise RuntimeError("cluster clients are not available in this call")
        if method == "read_cluster":
            ok, value = services.read_cluster(str(args[0]))
            reply["value"] = [bool(ok), value]
        elif method == "execute_query":
            ok, value = services.execute_query(args[0])
            reply["value"] = [bool(ok), value]
        elif method == "get_cluster_metrics":
            reply["value"] = services.get_cluster_metrics(str(args[0]))
        elif method == "query_cluster_metrics":
            reply["value"] = list(services.query_cluster_metrics(args[0]))
        else:
            raise ValueError(f"unknown method {method!r}")
        return _frame(reply)
    except Exception as exc:
        kind = "LookupError" if isinstance(exc, LookupError) else type(exc).__name__
        return _frame(
            {"op": "reply", "id": frame.get("id"), "ok": False, "type": kind, "message": str(exc)}
        )


class Slot:
    """A place in the pool: holds at most one live worker and replaces it when it fails.

    Created by :class:`~apportion.policies.sandbox.SandboxPool`, one per worker. ``warm`` and
    ``run`` are called from the pool's threads, one thread per slot at a time; ``stop`` may come
    from another thread while ``run`` is in progress and makes it end with :class:`PolicyError`.
    ``run`` raises PolicyTimeout, PolicyError, InvalidRequest (arguments not JSON) or
    MessageTooLarge, and returns the worker's ``result`` or ``error`` frame with the wall time.
    """

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self.worker: _Worker | None = None
        self.closed = False
        self.busy = False  # an exchange thread owns the worker (its pipes) right now
        self.lock = threading.Lock()

    def warm(self) -> None:
        with self.lock:
            if not self.closed and self.worker is None:
                self.worker = _Worker(self.limits)

    def stop(self) -> None:
        with self.lock:
            self.closed = True
            worker, self.worker, busy = self.worker, None, self.busy
        if worker is not None and busy:
            worker.kill()  # the exchange thread sees end of stream and closes the pipes
        elif worker is not None:
            worker.close()

    def _replace(self, worker: _Worker) -> str:
        how = worker.close()
        with self.lock:
            if self.worker is worker:
                self.worker = None
        try:
            self.warm()
        except Internal as exc:  # retried on the next call
            logger.error("sandbox worker restart failed: %s", exc.message)
        return how

    def _encode(self, uri: str, request: dict[str, Any]) -> bytes:
        try:
            data = _frame(request)
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
        """One exchange on this slot's worker (thread side). Raises PolicyTimeout/PolicyError."""
        self.warm()
        with self.lock:
            worker = self.worker
            self.busy = worker is not None
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
        self, worker: _Worker, uri: str, request: dict[str, Any], services: SandboxServices | None
    ) -> tuple[dict[str, Any], float]:
        request["id"] = next(worker.ids)
        data = self._encode(uri, request)
        started = time.monotonic()
        try:
            answer = worker.exchange(request["id"], data, services)
        except _Timeout:
            self._replace(worker)
            limit = self.limits.timeout_seconds
            raise PolicyTimeout(
                f"policy {uri} ran longer than the limit of {limit} s and was stopped",
                details={"policy_rule_uri": uri, "timeout_seconds": limit},
            ) from None
        except (_Gone, _Garbled) as exc:
            tail = list(worker.tail)[-5:]
            how = self._replace(worker)
            if isinstance(exc, _Garbled):
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
        # validate ran freshly uploaded top-level code: do not let it share a worker afterwards
        if worn or answer.get("type") == "MemoryError" or request["op"] == "validate":
            self._replace(worker)
        return answer, elapsed_ms
