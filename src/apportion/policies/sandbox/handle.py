"""The parent's handle on one sandbox worker process: spawn it, exchange frames, kill and reap it.

Used by :class:`apportion.policies.sandbox.slot.Slot`, from one exchange thread at a time. The
worker (``worker.py``) is spawned with an argv list, a clean minimal environment (nothing
of the server's, no ``APPORTION_*``) and its own session (so a kill takes its children too):
inside a ``bwrap`` jail with its own cgroups when the pool has a jail (``jail.py``; killing the
jail's outer process ends its PID namespace and everything in it), else with a private
temporary cwd (the ``unsandboxed_policies`` opt-in). Its stdin and stdout carry the private protocol (length-prefixed JSON frames);
its stderr is drained by a thread into the logger ``apportion.policies.sandbox.pool`` (DEBUG), so a
chatty policy can never block it. While an exchange is in progress, the worker's client calls are
answered from the given :class:`~apportion.policies.sandbox.pool.SandboxServices`.

A deadline passing raises :class:`WorkerTimeout`, end of stream :class:`WorkerGone`, a frame that
breaks the protocol :class:`WorkerGarbled`; the slot turns them into the pool's typed errors.
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
from apportion.errors import Internal
from apportion.policies.sandbox.jail import JAIL_TMP, WorkerCgroups
from apportion.policies.sandbox.worker import HEADER

if TYPE_CHECKING:
    from apportion.policies.sandbox.jail import Jail
    from apportion.policies.sandbox.pool import SandboxLimits, SandboxServices

# The pool's documented logger name: worker stderr is logged under it.
logger = logging.getLogger("apportion.policies.sandbox.pool")

WORKER_MODULE = "apportion.policies.sandbox.worker"
STARTUP_SECONDS = 30.0
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


class WorkerTimeout(Exception):
    """The exchange's wall-clock deadline passed."""


class WorkerGone(Exception):
    """The worker's pipes reached end of stream or broke: it has ended."""


class WorkerGarbled(Exception):
    """The worker sent a frame that breaks the protocol (too large, not JSON, unexpected)."""


def encode_frame(obj: Any) -> bytes:
    """``obj`` as one protocol frame (length header + JSON); TypeError if it is not JSON."""
    body = jsonutil.dumps(obj)
    return HEADER.pack(len(body)) + body


def _describe(returncode: int | None, limits: SandboxLimits, jailed: bool) -> str:
    """How the worker ended; a jail (``bwrap``) reports a signal as exit code 128 + signal."""
    if returncode is None:
        return "did not exit"
    if jailed and 128 < returncode < 128 + 65:
        returncode = 128 - returncode
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


class WorkerHandle:
    """One worker process and its pipes. Used by one exchange thread at a time.

    Created by :meth:`~apportion.policies.sandbox.slot.Slot.warm`; the constructor returns once
    the worker reported ready and raises :class:`Internal` if it could not start or did not.
    """

    def __init__(self, limits: SandboxLimits, jail: Jail | None) -> None:
        self.limits = limits
        self.jailed = jail is not None
        self.cwd = tempfile.mkdtemp(prefix="apportion-sandbox-")
        argv = [sys.executable, "-I", "-B", "-m", WORKER_MODULE]
        argv += ["--memory-mb", str(limits.memory_mb), "--cpu-seconds", str(limits.cpu_seconds)]
        argv += ["--max-message-bytes", str(limits.max_message_bytes)]
        argv += ["--max-answer-bytes", str(limits.max_answer_bytes)]
        argv += ["--max-context-bytes", str(limits.max_context_bytes)]
        env = dict(_ENV, HOME=self.cwd, TMPDIR=self.cwd)
        self.cgroups: WorkerCgroups | None = None
        if jail is not None:  # the worker's cwd is the jail's private tmpfs, not self.cwd
            argv += ["--uid", str(jail.uid), "--gid", str(jail.gid)]
            if jail.cgroups:  # the worker's own pids group caps its tree: no shared NPROC
                self.cgroups = WorkerCgroups(limits.memory_mb * 2**20, limits.max_processes)
                argv.append("--join-cgroups")
            else:  # the last resort: RLIMIT_NPROC counts every process of the sandbox user
                argv += ["--max-processes", str(limits.max_processes)]
            argv = jail.argv(argv, tmp_mb=limits.tmp_mb, cgroups=self.cgroups)
            env = dict(_ENV, HOME=JAIL_TMP, TMPDIR=JAIL_TMP)
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
            if self.cgroups is not None:
                self.cgroups.remove()
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
        except (WorkerTimeout, WorkerGone, WorkerGarbled) as exc:
            how = self.kill()
            raise Internal(f"a sandbox worker failed to start ({how}): {exc}") from None
        if not (isinstance(ready, dict) and ready.get("op") == "ready"):
            self.kill()
            raise Internal(f"a sandbox worker sent {ready!r} instead of ready")

    def left_running(self) -> bool:
        """Whether the worker's ``pids`` group holds more than the worker's one task after an
        answer: a thread or process of the call still runs (the worker cannot hide it from
        here). False without cgroups (the worker's own check is what there is)."""
        return self.cgroups is not None and self.cgroups.tasks() > 1

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
                raise WorkerTimeout
            if not poller.poll(remaining * 1000):
                continue
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                continue
            except OSError as exc:  # BrokenPipeError: the worker is gone
                raise WorkerGone(str(exc)) from None

    def read(self, deadline: float) -> Any:
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        while True:
            if len(self.buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buffer)
                if size > self.limits.max_reply_frame:  # refused before it is read or parsed
                    limit = self.limits.max_reply_frame
                    raise WorkerGarbled(f"a frame of {size} bytes is over the limit of {limit}")
                end = HEADER.size + size
                if len(self.buffer) >= end:
                    body = bytes(self.buffer[HEADER.size : end])
                    del self.buffer[:end]
                    try:
                        return jsonutil.loads(body)
                    except Exception as exc:
                        raise WorkerGarbled(f"a frame is not JSON ({exc})") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise WorkerGone("end of stream")
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
            if self.cgroups is not None:
                self.cgroups.remove()
            return _describe(self.proc.returncode, self.limits, self.jailed)

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
                raise WorkerGarbled(f"unexpected frame {str(frame)[:200]!r}")


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
        return encode_frame(reply)
    except Exception as exc:
        kind = "LookupError" if isinstance(exc, LookupError) else type(exc).__name__
        return encode_frame(
            {"op": "reply", "id": frame.get("id"), "ok": False, "type": kind, "message": str(exc)}
        )
