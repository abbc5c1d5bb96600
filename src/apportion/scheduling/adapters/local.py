"""The ``local`` scheduler adapter: every worker of a job is a real process on this host.

The job engine calls it after it has placed and held a job's workers (see ``base.py`` for the
protocol). Each worker runs under a small supervisor process (``local_supervisor.py``) started in
its own session, so a job keeps running — and its exit code is recorded — when the server is
killed; a restarted server builds a new :class:`LocalAdapter` and finds everything again from the
files in ``spec.output_dir``:

``job.json``                 the tag (``spec.job_id``), written atomically before anything starts
``worker-<i>.launch.json``   what the supervisor runs (argv, cwd, environment; mode 0600)
``worker-<i>.state.json``    pid, pgid, started_at, ended_at, return_code, signal, reason, …
``worker-<i>.out`` / ``.err`` the command's stdout and stderr
``cancel.json``              a cancellation was requested (so a restart reports ``cancelled``)
``gang.json``                a worker failed; its siblings are being stopped
``usage.json``               the last resource-usage sample

Gang semantics: when one worker fails (non-zero exit, killed, walltime, could not start) the other
workers of the job are stopped (SIGTERM to their process groups, SIGKILL after the grace period)
by their own supervisors, and the job is ``failed`` with the failing worker's code and reason —
the first failing worker by index, not counting the siblings stopped because of it. A worker
killed by signal N reports ``return_code`` 128 + N (the shell's convention).

States (:meth:`LocalAdapter.poll`): ``running`` while any worker runs (a worker whose state file
says it has not ended counts as running while its command or its supervisor is alive — checked
with psutil, pid *and* create time, so a reused pid never counts); ``cancelled`` when
``cancel.json`` exists and no worker had failed on its own before it; ``completed`` when every
worker exited 0; ``failed`` otherwise (also when a worker was lost — its supervisor and command
died without a record — or never started because the server died during ``submit``; the
survivors are then stopped); ``unknown`` when no worker ever started.

``submit`` is idempotent (a job :meth:`LocalAdapter.find` finds is not started twice). Each
submit attempt has a token in ``job.json``; a supervisor whose token is not the current one does
not start its command, so a re-dispatch after a crash cannot run a worker twice (the remaining
window is a supervisor that read the old token in the instant before the new one was written).
Supervisors this server started are reaped on every call; after a crash their parent is gone and
the system's init reaps them.

Logs (:meth:`LocalAdapter.logs`) are read by ``local_logs.py``; usage samples
(:meth:`LocalAdapter.usage`) are taken by ``local_usage.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed

import apportion
from apportion.scheduling.adapters import local_logs, local_usage
from apportion.scheduling.adapters import local_supervisor as sv
from apportion.scheduling.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
    WorkerSpec,
)

BASE_ENV_KEYS = ("PATH", "HOME", "LANG")  # never the server's whole environment (admin key)
_SRC_ROOT = str(Path(apportion.__file__).resolve().parent.parent)
_START_TIMEOUT = 15.0  # seconds for every supervisor to report its command started
_OWNER_TOLERANCE = 2.0  # seconds between a recorded start and psutil's create_time


def base_environment() -> dict[str, str]:
    """The server's minimal safe environment for jobs: PATH, HOME and LANG only."""
    env = {key: os.environ[key] for key in BASE_ENV_KEYS if key in os.environ}
    env.setdefault("PATH", os.defpath)
    return env


def worker_environment(spec: JobSpec, worker: WorkerSpec) -> dict[str, str]:
    """Base + ``spec.env`` + the GPU and ``APPORTION_*`` variables (which win over ``spec.env``)."""
    env = base_environment()
    env.update(spec.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(worker.gpus)
    env["APPORTION_JOB_ID"] = spec.job_id
    env["APPORTION_WORKER_INDEX"] = str(worker.index)
    env["APPORTION_NUM_WORKERS"] = str(len(spec.workers))
    return env


@dataclass(frozen=True)
class _Worker:
    """One worker as the files and the process table show it."""

    index: int
    state: dict[str, Any] | None
    kind: str  # "missing" | "running" | "ended" | "lost"

    @property
    def code(self) -> int:
        """Exit code, 128 + N when killed by signal N, 1 when lost."""
        if self.state is None or self.kind == "lost":
            return 1
        if self.state.get("signal") is not None:
            return 128 + int(self.state["signal"])
        return int(self.state.get("return_code") or 0)

    @property
    def failure(self) -> str:
        if self.kind == "lost":
            return f"worker {self.index} was lost: its supervisor ended without recording an exit"
        if self.kind == "missing":
            return f"worker {self.index} was never started (the server stopped during submit)"
        state = self.state or {}
        colon = ":" if state.get("stopped_by") else ""
        return f"worker {self.index}{colon} {state.get('reason') or 'failed'}"

    @property
    def genuine_failure(self) -> bool:
        """Failed by itself — not stopped by a cancel or because a sibling failed."""
        stopped_by = (self.state or {}).get("stopped_by")
        return (self.code != 0 or self.kind != "ended") and stopped_by not in ("cancel", "gang")


def _owned(pid: object, started_at: object, pgid: object = None) -> Any:
    """The live ``psutil.Process`` for ``pid`` if it is still the process we started, else None.

    Guards every signal: a pid is ours only if it was created when we recorded its start (within
    :data:`_OWNER_TOLERANCE`) and, for a command, still leads the process group we recorded.
    """
    if not isinstance(pid, int) or not isinstance(started_at, int | float):
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(started_at)) > _OWNER_TOLERANCE:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if pgid is not None and os.getpgid(pid) != pgid:
            return None
    except (psutil.Error, OSError):
        return None
    return proc


def _command_proc(state: dict[str, Any]) -> Any:
    return _owned(state.get("pid"), state.get("started_at"), state.get("pgid"))


class LocalAdapter:
    """Runs jobs as local processes; satisfies the :class:`~.base.Adapter` protocol."""

    name = "local"

    def __init__(self, *, grace_seconds: float = 5.0) -> None:
        if grace_seconds < 0:
            raise ValueError("grace_seconds must be >= 0")
        self.grace_seconds = grace_seconds
        self._submitting: set[str] = set()
        self._supervisors: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._lock = threading.Lock()  # methods run in worker threads (asyncio.to_thread)
        self._samples: dict[str, dict[str, Any]] = {}

    @staticmethod
    def scheduler_id(spec: JobSpec) -> str:
        return f"local-{spec.job_id}"

    # ---- protocol -------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> str:
        """Start every worker (under its supervisor); return ``local-<job_id>``.

        Idempotent: a job that :meth:`find` already finds is not started again. Raises
        :class:`AdapterError` for an empty command, bad workers or environment, a missing
        working directory, or a supervisor that could not start.
        """
        return await asyncio.to_thread(self._submit, spec)

    async def find(self, spec: JobSpec) -> str | None:
        """``local-<job_id>`` if the tag file names this job and a worker started, else None."""
        return await asyncio.to_thread(self._find, spec)

    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state from its state files and a liveness check of its processes."""
        return await asyncio.to_thread(self._poll, spec, scheduler_job_id)

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """Record the cancellation, SIGTERM every worker's process group, SIGKILL after
        ``grace_seconds``; returns when the workers have ended. Idempotent; works after a
        restart. Signals only processes that are verifiably ours."""
        await asyncio.to_thread(self._cancel, spec, scheduler_job_id)

    async def logs(
        self, spec: JobSpec, scheduler_job_id: str, *, offset: int = 0, limit: int = 65536
    ) -> LogChunk:
        """Up to ``limit`` bytes of the job's stdout stream from ``offset`` (see ``local_logs``)."""
        if offset < 0 or limit < 1:
            raise AdapterError(f"logs needs offset >= 0 and limit >= 1 (got {offset}, {limit})")
        return await asyncio.to_thread(self._logs, spec, offset, limit)

    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """A psutil sample over the workers' process trees (finished jobs: the last sample)."""
        return await asyncio.to_thread(self._usage, spec)

    async def partitions(self) -> list[dict[str, Any]]:
        return [
            {"name": "local", "adapter": "local", "nodes": 1, "cpus": os.cpu_count(), "state": "up"}
        ]

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    # ---- submit / find --------------------------------------------------------------------

    def _find(self, spec: JobSpec) -> str | None:
        tag = sv.read_json(Path(spec.output_dir) / sv.TAG_FILE)
        if tag is None or tag.get("job_id") != spec.job_id:
            return None
        started = any(sv.state_path(spec.output_dir, w.index).exists() for w in spec.workers)
        return self.scheduler_id(spec) if started else None

    def _validate(self, spec: JobSpec) -> Path:
        if not spec.command or not all(isinstance(a, str) for a in spec.command):
            raise AdapterError("the job's command must be a non-empty list of strings (argv)")
        if any("\0" in a for a in spec.command):
            raise AdapterError("the job's command may not contain NUL characters")
        if not spec.workers:
            raise AdapterError("the job has no workers to start")
        indices = sorted(w.index for w in spec.workers)
        if indices != list(range(len(spec.workers))):
            raise AdapterError(f"worker indices must be 0..{len(spec.workers) - 1}, got {indices}")
        for key, value in spec.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise AdapterError(
                    f"environment variable {key!r} is not valid: use a non-empty name without"
                    " '=' or NUL, and a value without NUL"
                )
        cwd = Path(spec.working_dir) if spec.working_dir else Path(spec.output_dir)
        if spec.working_dir and not cwd.is_dir():
            raise AdapterError(f"the working directory {spec.working_dir} does not exist")
        return cwd.resolve()

    def _submit(self, spec: JobSpec) -> str:
        cwd = self._validate(spec)
        existing = self._find(spec)
        if existing is not None:
            return existing
        job_dir = Path(spec.output_dir)
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AdapterError(f"cannot create the output directory {job_dir}: {exc}") from None
        attempt = uuid.uuid4().hex
        self._submitting.add(spec.job_id)
        try:
            stale = [sv.CANCEL_FILE, sv.GANG_FILE, sv.USAGE_FILE]  # of an attempt that never ran
            stale += [sv.state_path(job_dir, w.index).name for w in spec.workers]
            for name in stale:
                (job_dir / name).unlink(missing_ok=True)
            sv.write_json_atomic(
                job_dir / sv.TAG_FILE,
                {
                    "job_id": spec.job_id,
                    "scheduler_job_id": self.scheduler_id(spec),
                    "num_workers": len(spec.workers),
                    "attempt": attempt,
                    "submitted_at": time.time(),
                },
            )
            procs = [self._start_supervisor(spec, w, cwd, attempt) for w in spec.workers]
            with self._lock:
                self._supervisors[spec.job_id] = procs
            self._await_started(spec, procs)
        except OSError as exc:
            raise AdapterError(f"could not start job {spec.job_id}: {exc}") from None
        finally:
            self._submitting.discard(spec.job_id)
        return self.scheduler_id(spec)

    def _start_supervisor(
        self, spec: JobSpec, worker: WorkerSpec, cwd: Path, attempt: str
    ) -> subprocess.Popen[bytes]:
        job_dir = Path(spec.output_dir)
        launch = {
            "job_id": spec.job_id,
            "index": worker.index,
            "attempt": attempt,
            "job_dir": str(job_dir.resolve()),
            "command": list(spec.command),
            "cwd": str(cwd),
            "env": worker_environment(spec, worker),
            "stdout": str(sv.stdout_path(job_dir, worker.index).resolve()),
            "stderr": str(sv.stderr_path(job_dir, worker.index).resolve()),
            "walltime": spec.walltime_seconds,
            "grace": self.grace_seconds,
        }
        path = sv.launch_path(job_dir, worker.index)
        sv.write_json_atomic(path, launch)
        env = base_environment()
        env["PYTHONPATH"] = _SRC_ROOT
        with (job_dir / f"worker-{worker.index}.supervisor.log").open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - argv list, never a shell
                [sys.executable, "-m", sv.__name__, str(path.resolve())],
                cwd=job_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _await_started(self, spec: JobSpec, procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        pending = {w.index: proc for w, proc in zip(spec.workers, procs, strict=True)}
        while pending:
            for index, proc in list(pending.items()):
                if sv.state_path(spec.output_dir, index).exists():
                    del pending[index]
                elif (proc.poll() is not None or time.monotonic() > deadline) and not (
                    sv.state_path(spec.output_dir, index).exists()  # wrote it, then exited
                ):
                    self._abort(spec)
                    log = Path(spec.output_dir) / f"worker-{index}.supervisor.log"
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    raise AdapterError(
                        f"the supervisor of worker {index} did not start its command: {tail}"
                    )
            time.sleep(0.005)

    def _abort(self, spec: JobSpec) -> None:
        """Stop what a failed submit already started (their supervisors see ``gang.json``)."""
        reason = "submit failed before every worker started"
        sv.write_json_atomic(Path(spec.output_dir) / sv.GANG_FILE, {"worker": -1, "reason": reason})

    # ---- poll / cancel --------------------------------------------------------------------

    def _reap(self) -> None:
        """Reap the supervisors this server started that have exited (no zombies pile up)."""
        with self._lock:
            for job_id, procs in list(self._supervisors.items()):
                alive = [p for p in procs if p.poll() is None]
                if alive:
                    self._supervisors[job_id] = alive
                else:
                    del self._supervisors[job_id]

    def _workers(self, spec: JobSpec) -> list[_Worker]:
        self._reap()
        out: list[_Worker] = []
        for w in sorted(spec.workers, key=lambda w: w.index):
            state = sv.read_json(sv.state_path(spec.output_dir, w.index))
            if state is None:
                kind = "missing"
            elif state.get("ended_at") is not None:
                kind = "ended"
            elif _command_proc(state) is not None or (
                _owned(state.get("supervisor_pid"), state.get("supervisor_started_at")) is not None
            ):
                kind = "running"
            else:  # re-read: the supervisor may have just written its final state
                state = sv.read_json(sv.state_path(spec.output_dir, w.index)) or state
                kind = "ended" if state.get("ended_at") is not None else "lost"
            out.append(_Worker(w.index, state, kind))
        return out

    def _poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        if scheduler_job_id != self.scheduler_id(spec):
            return BackendStatus(BackendState.UNKNOWN, reason=f"{scheduler_job_id} is not this job")
        job_dir = Path(spec.output_dir)
        workers = self._workers(spec)
        if all(w.kind == "missing" for w in workers):
            if spec.job_id in self._submitting:
                return BackendStatus(BackendState.PENDING)
            return BackendStatus(BackendState.UNKNOWN, reason="the job never reached the backend")
        starts = [
            float(w.state["started_at"]) for w in workers if w.state and w.state.get("started_at")
        ]
        started_at = min(starts) if starts else None
        broken = [w for w in workers if w.kind in ("missing", "lost")]
        if any(w.kind == "running" for w in workers):
            if broken and spec.job_id not in self._submitting:
                reason = broken[0].failure
                if not (job_dir / sv.GANG_FILE).exists():
                    sv.write_json_atomic(job_dir / sv.GANG_FILE, {"worker": -1, "reason": reason})
            return BackendStatus(BackendState.RUNNING, started_at=started_at)
        ends = [float(w.state["ended_at"]) for w in workers if w.state and w.state.get("ended_at")]
        ended_at = max(ends) if ends else None
        cancel = sv.read_json(job_dir / sv.CANCEL_FILE)
        if cancel is not None:
            requested = float(cancel.get("requested_at") or 0.0)
            failed_first = any(
                w.genuine_failure and float((w.state or {}).get("ended_at") or "inf") <= requested
                for w in workers
            )
            if not failed_first and any(
                w.code != 0 or (w.state or {}).get("stopped_by") == "cancel" for w in workers
            ):
                return BackendStatus(
                    BackendState.CANCELLED,
                    reason="cancelled",
                    started_at=started_at,
                    ended_at=ended_at,
                )
        failed = [w for w in workers if w.code != 0 or w.kind != "ended"]
        if not failed:
            return BackendStatus(
                BackendState.COMPLETED, return_code=0, started_at=started_at, ended_at=ended_at
            )
        primary = next((w for w in failed if w.genuine_failure), failed[0])
        return BackendStatus(
            BackendState.FAILED,
            return_code=primary.code,
            reason=primary.failure,
            started_at=started_at,
            ended_at=ended_at,
        )

    def _cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        if scheduler_job_id != self.scheduler_id(spec):
            raise AdapterError(f"{scheduler_job_id} is not the local job of {spec.job_id}")
        if not any(w.kind == "running" for w in self._workers(spec)):
            return  # finished, lost or never started: nothing to stop (idempotent)
        job_dir = Path(spec.output_dir)
        if not (job_dir / sv.CANCEL_FILE).exists():
            sv.write_json_atomic(job_dir / sv.CANCEL_FILE, {"requested_at": time.time()})
        self._signal_running(spec, signal.SIGTERM)
        if not self._wait_ended(spec, self.grace_seconds):
            self._signal_running(spec, signal.SIGKILL)
            self._wait_ended(spec, 2.0)

    def _signal_running(self, spec: JobSpec, sig: signal.Signals) -> None:
        for w in self._workers(spec):
            if w.kind == "running" and w.state is not None:
                proc = _command_proc(w.state)
                if proc is not None:  # verified ours: signal its whole process group
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(w.state["pgid"]), sig)

    def _wait_ended(self, spec: JobSpec, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if not any(w.kind == "running" for w in self._workers(spec)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # ---- logs / usage ---------------------------------------------------------------------

    def _logs(self, spec: JobSpec, offset: int, limit: int) -> LogChunk:
        workers = [(w.index, w.kind in ("running", "missing")) for w in self._workers(spec)]
        return local_logs.read_stream(Path(spec.output_dir), workers, offset, limit)

    def _usage(self, spec: JobSpec) -> dict[str, Any]:
        usage_file = Path(spec.output_dir) / sv.USAGE_FILE
        record = self._samples.get(spec.job_id) or sv.read_json(usage_file) or {}
        workers: list[tuple[str, dict[str, Any], Any]] = []
        for w in self._workers(spec):
            state = w.state or {}
            proc = _command_proc(state) if w.kind == "running" else None
            workers.append((w.kind, state, proc))
        sample, self._samples[spec.job_id] = local_usage.job_usage(usage_file, record, workers)
        return sample
