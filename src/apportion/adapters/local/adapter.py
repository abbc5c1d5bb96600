"""The ``local`` scheduler adapter: every worker of a job is a real process on this host.

The job engine calls it after it has placed and held a job's workers (see ``base.py`` for the
protocol). Each worker runs under a small supervisor process (``supervisor.py``) started in
its own session, so a job keeps running — and its exit code is recorded — when the server is
killed; a restarted server builds a new :class:`LocalAdapter` and finds everything again from the
files in ``spec.output_dir``:

``job.json``                 the tag (``spec.run_id``), written atomically before anything starts
``worker-<i>.launch.json``   what the supervisor runs (argv, cwd, environment; mode 0600)
``worker-<i>.state.json``    pid, pgid, started_at, ended_at, return_code, signal, reason, …
``worker-<i>.out``           the command's stdout and stderr in the order written (0600, as all)
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

Identity: with ``spec.run_as`` (the server is root), each supervisor — itself the server's user —
starts the command as that user (groups, gid, uid set before exec, ``HOME``/``USER``/``LOGNAME``
in its environment). The job's directory is 0700 and its files 0600, the server's alone: the
command gets its stdout and stderr as open descriptors, and its working directory is
``spec.working_dir``, entered as that user after the switch.

Logs (:meth:`LocalAdapter.logs`) are read by ``logs.py``; usage samples
(:meth:`LocalAdapter.usage`) are taken by ``usage.py``. Starting the workers is
``launch.py``, reading their state ``workers.py``, and the rules above that turn
workers into the job's state ``job_status.py``; this module is the adapter that ties them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
)
from apportion.adapters.local import logs as local_logs
from apportion.adapters.local import supervisor as sv
from apportion.adapters.local import usage as local_usage
from apportion.adapters.local.job_status import job_status
from apportion.adapters.local.launch import (
    await_started,
    start_supervisor,
    validate_spec,
)
from apportion.adapters.local.workers import WorkerView, command_process, read_workers


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
        return f"local-{spec.run_id}"

    # ---- protocol -------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> str:
        """Start every worker (under its supervisor); return ``local-<job_id>``.

        Idempotent: a job that :meth:`find` already finds is not started again. Raises
        :class:`AdapterError` for an empty command, bad workers or environment, a missing
        working directory, or a supervisor that could not start.
        """
        started = await asyncio.to_thread(self._start, spec)
        if isinstance(started, str):
            return started  # already running: submit is idempotent
        try:
            await await_started(spec, started)
        finally:
            self._submitting.discard(spec.run_id)
        return self.scheduler_id(spec)

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
        self,
        spec: JobSpec,
        scheduler_job_id: str,
        *,
        offset: int = 0,
        limit: int = 65536,
        worker: int | None = None,
    ) -> LogChunk:
        """Up to ``limit`` bytes of the job's output stream (stdout and stderr) from ``offset``
        (see :mod:`apportion.adapters.local.logs`)."""
        if offset < 0 or limit < 1:
            raise AdapterError(f"logs needs offset >= 0 and limit >= 1 (got {offset}, {limit})")
        if worker is not None and not 0 <= worker < len(spec.workers):
            raise AdapterError(f"the job has workers 0 to {len(spec.workers) - 1}, not {worker}")
        return await asyncio.to_thread(self._logs, spec, offset, limit, worker)

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
        if tag is None or tag.get("job_id") != spec.run_id:
            return None
        started = any(sv.state_path(spec.output_dir, w.index).exists() for w in spec.workers)
        return self.scheduler_id(spec) if started else None

    def _start(self, spec: JobSpec) -> str | list[subprocess.Popen[bytes]]:
        """Start the supervisors (the job is then in ``_submitting`` until they report in);
        or the scheduler id of a job that already runs."""
        cwd = validate_spec(spec)
        existing = self._find(spec)
        if existing is not None:
            return existing
        job_dir = Path(spec.output_dir)
        try:
            job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(job_dir, 0o700)  # the server's alone: the job writes through descriptors
        except OSError as exc:
            raise AdapterError(f"cannot create the output directory {job_dir}: {exc}") from None
        attempt = uuid.uuid4().hex
        self._submitting.add(spec.run_id)
        try:
            stale = [sv.CANCEL_FILE, sv.GANG_FILE, sv.USAGE_FILE]  # of an attempt that never ran
            stale += [sv.state_path(job_dir, w.index).name for w in spec.workers]
            for name in stale:
                (job_dir / name).unlink(missing_ok=True)
            sv.write_json_atomic(
                job_dir / sv.TAG_FILE,
                {
                    "job_id": spec.run_id,
                    "scheduler_job_id": self.scheduler_id(spec),
                    "num_workers": len(spec.workers),
                    "attempt": attempt,
                    "submitted_at": time.time(),
                },
            )
            procs = [
                start_supervisor(spec, w, cwd, attempt, self.grace_seconds) for w in spec.workers
            ]
            with self._lock:
                self._supervisors[spec.run_id] = procs
        except OSError as exc:
            self._submitting.discard(spec.run_id)
            raise AdapterError(f"could not start job {spec.job_id}: {exc}") from None
        except BaseException:
            self._submitting.discard(spec.run_id)
            raise
        return procs

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

    def _workers(self, spec: JobSpec) -> list[WorkerView]:
        self._reap()
        return read_workers(spec)

    def _poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        if scheduler_job_id != self.scheduler_id(spec):
            return BackendStatus(BackendState.UNKNOWN, reason=f"{scheduler_job_id} is not this job")
        return job_status(spec, self._workers(spec), self._submitting)

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
                proc = command_process(w.state)
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

    def _logs(self, spec: JobSpec, offset: int, limit: int, worker: int | None) -> LogChunk:
        workers = [(w.index, w.kind in ("running", "missing")) for w in self._workers(spec)]
        if worker is not None:  # that worker's own stream (no header)
            workers = [w for w in workers if w[0] == worker]
        return local_logs.read_stream(Path(spec.output_dir), workers, offset, limit)

    def _usage(self, spec: JobSpec) -> dict[str, Any]:
        usage_file = Path(spec.output_dir) / sv.USAGE_FILE
        record = self._samples.get(spec.run_id) or sv.read_json(usage_file) or {}
        workers: list[tuple[str, dict[str, Any], Any]] = []
        for w in self._workers(spec):
            state = w.state or {}
            proc = command_process(state) if w.kind == "running" else None
            workers.append((w.kind, state, proc))
        sample, self._samples[spec.run_id] = local_usage.job_usage(usage_file, record, workers)
        return sample


def create_adapter() -> LocalAdapter:
    """The ``local`` adapter (the entry point of ``apportion.adapters``; it runs anywhere)."""
    return LocalAdapter()
