"""The ``local`` scheduler adapter: every worker of a job is a real process on this host.

The job engine calls it after it has placed and held a job's workers (see ``base.py`` for the
protocol). Every worker's command is started, watched and recorded by the executor of the job's
jobs directory (``executor.py``: one long-lived, single-threaded process per directory, in its
own session, started by this adapter when none answers — ``executor_link.py``), so a job keeps
running — and its exit code is recorded — when the server is killed; a restarted server builds a
new :class:`LocalAdapter`, connects to the same executor and finds everything again from the
files in ``spec.output_dir``:

``job.json``                 the tag (``spec.run_id``, the submit attempt), written before
                             anything starts
``worker-<i>.state.json``    pid, pgid, started_at, ended_at, return_code, signal, reason, …
``worker-<i>.out``           the command's stdout and stderr in the order written (0600, as all)
``cancel.json``              a cancellation was requested (so a restart reports ``cancelled``)
``gang.json``                a worker failed; its siblings are being stopped
``usage.json``               the last resource-usage sample

Gang semantics: when one worker fails (non-zero exit, killed, walltime, could not start) the
executor stops the other workers of the job (SIGTERM to their process groups, SIGKILL after the
grace period), and the job is ``failed`` with the failing worker's code and reason — the first
failing worker by index, not counting the siblings stopped because of it. A worker killed by
signal N reports ``return_code`` 128 + N (the shell's convention).

States (:meth:`LocalAdapter.poll`): ``running`` while any worker runs (a worker whose state file
says it has not ended counts as running while its executor is alive — checked with psutil, pid
*and* create time, so a reused pid never counts); ``cancelled`` when ``cancel.json`` exists and no
worker had failed on its own before it; ``completed`` when every worker exited 0; ``failed``
otherwise — also when a worker was lost (its executor died before recording its end: a command
that outlived it is stopped, as nobody could record its exit) or never started because the
server died during ``submit`` (the survivors are then stopped); ``unknown`` when no worker ever
started.

``submit`` is idempotent (a job :meth:`LocalAdapter.find` finds is not started twice). Each
submit attempt has a token in ``job.json``; the executor starts nothing for a request whose
token is not the current one, and carries out what a dead server had sent before a restarted
server's requests, so a re-dispatch after a crash cannot run a worker twice.

Identity: with ``spec.run_as`` (the server is root), the executor — itself the server's user —
starts the command as that user (groups, gid, uid set before exec, ``HOME``/``USER``/``LOGNAME``
in its environment). The job's directory is 0700 and its files 0600, the server's alone: the
command gets its stdout and stderr as open descriptors, and its working directory is
``spec.working_dir``, entered as that user after the switch.

Logs (:meth:`LocalAdapter.logs`) are read by ``logs.py``; usage samples
(:meth:`LocalAdapter.usage`) are taken by ``usage.py``. The start request is built by
``launch.py``, the workers' state read by ``workers.py``, and the rules above that turn workers
into the job's state are ``job_status.py``; this module is the adapter that ties them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
)
from apportion.adapters.local import executor as ex
from apportion.adapters.local import logs as local_logs
from apportion.adapters.local import usage as local_usage
from apportion.adapters.local.executor_link import ExecutorGone, ExecutorLink
from apportion.adapters.local.job_status import job_status
from apportion.adapters.local.launch import base_environment, start_request, validate_spec
from apportion.adapters.local.workers import (
    WorkerView,
    command_process,
    read_workers,
    stop_orphans,
)
from apportion.thread_batch import ThreadBatch


class LocalAdapter:
    """Runs jobs as local processes; satisfies the :class:`~.base.Adapter` protocol."""

    name = "local"

    def __init__(self, *, grace_seconds: float = 5.0) -> None:
        if grace_seconds < 0:
            raise ValueError("grace_seconds must be >= 0")
        self.grace_seconds = grace_seconds
        self._submitting: set[str] = set()
        self._links: dict[Path, ExecutorLink] = {}  # jobs directory → its executor
        self._listeners: list[Callable[[str | None], None]] = []
        self._samples: dict[str, dict[str, Any]] = {}
        # the file reads and writes of many jobs at once share a thread hop
        self._prepared = ThreadBatch(self._prepare)
        self._found = ThreadBatch(self._find)
        self._polled: ThreadBatch[tuple[JobSpec, str], BackendStatus] = ThreadBatch(
            lambda call: self._poll(*call)
        )
        self._sampled = ThreadBatch(self._usage)

    @staticmethod
    def scheduler_id(spec: JobSpec) -> str:
        return f"local-{spec.run_id}"

    # ---- protocol -------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> str:
        """Have the executor start every worker; return ``local-<job_id>`` once each has a state
        file.

        Idempotent: a job that :meth:`find` already finds is not started again. Raises
        :class:`AdapterError` for an empty command, bad workers or environment, a missing
        working directory, or an executor that could not start it.
        """
        request = await self._prepared(spec)
        if isinstance(request, str):
            return request  # already running: submit is idempotent
        self._submitting.add(spec.run_id)
        try:
            answer = await self._start(spec, request)
        finally:
            self._submitting.discard(spec.run_id)
        if "error" in answer:
            raise AdapterError(f"could not start job {spec.job_id}: {answer['error']}")
        return self.scheduler_id(spec)

    async def _start(self, spec: JobSpec, request: dict[str, Any]) -> dict[str, Any]:
        """The executor's answer to ``request``. An executor that went away before answering
        (it died, or was exiting as it connected) is replaced once, unless it had started a
        worker — then the job is there, and lost (see :func:`stop_orphans`)."""
        link = self._link(spec)
        try:
            return await link.request(request)
        except ExecutorGone:
            if await self._found(spec) is not None:
                return {"started": len(spec.workers)}
        try:
            return await link.request(request)
        except ExecutorGone as exc:
            raise AdapterError(
                f"could not start job {spec.job_id}: {exc} twice (its log is"
                f" {link.jobs_dir / ex.LOG_NAME}); submit the job again"
            ) from None

    def on_change(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(run_id)`` when a worker of that job run ended (its executor says so
        at once), ``listener(None)`` when the connection to an executor was lost (its jobs may
        have ended, or been lost with it)."""
        self._listeners.append(listener)

    def _told(self, event: dict[str, Any] | None) -> None:
        run_id = None if event is None else Path(str(event.get("job_dir"))).name
        for listener in self._listeners:
            listener(run_id)

    def _link(self, spec: JobSpec) -> ExecutorLink:
        jobs_dir = Path(os.path.abspath(spec.output_dir)).parent  # no file system call
        link = self._links.get(jobs_dir)
        if link is None:
            link = ExecutorLink(jobs_dir, base_environment(), on_event=self._told)
            self._links[jobs_dir] = link
        return link

    async def close(self) -> None:
        """Close the connections to the executors; each exits when it has no command to watch
        (one that has goes on, and a later server connects to it again)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()

    async def find(self, spec: JobSpec) -> str | None:
        """``local-<job_id>`` if the tag file names this job and a worker started, else None.

        Asks the executor first (a round trip): it answers only once it has carried out what
        was sent to it before — a start a server sent just before it died is done, and found,
        before a restarted server decides the job never got there and dispatches it again."""
        with contextlib.suppress(ExecutorGone):
            await self._link(spec).request({"op": "status"})
        return await self._found(spec)

    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state from its state files and a liveness check of its processes; while
        it runs and once it ended, with its usage (``BackendStatus.usage``)."""
        return await self._polled((spec, scheduler_job_id))

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
        return await self._sampled(spec)

    async def partitions(self) -> list[dict[str, Any]]:
        return [
            {"name": "local", "adapter": "local", "nodes": 1, "cpus": os.cpu_count(), "state": "up"}
        ]

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    # ---- submit / find --------------------------------------------------------------------

    def _find(self, spec: JobSpec) -> str | None:
        tag = ex.read_json(Path(spec.output_dir) / ex.TAG_FILE)
        if tag is None or tag.get("job_id") != spec.run_id:
            return None
        started = any(ex.state_path(spec.output_dir, w.index).exists() for w in spec.workers)
        return self.scheduler_id(spec) if started else None

    def _prepare(self, spec: JobSpec) -> str | dict[str, Any]:
        """The executor's start request after the job's directory and tag are written; or the
        scheduler id of a job that already runs."""
        cwd = validate_spec(spec)
        existing = self._find(spec)
        if existing is not None:
            return existing
        job_dir = Path(spec.output_dir)
        attempt = uuid.uuid4().hex
        try:
            job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(job_dir, 0o700)  # the server's alone: the job writes through descriptors
            stale = [ex.CANCEL_FILE, ex.GANG_FILE, ex.USAGE_FILE]  # of an attempt that never ran
            stale += [ex.state_path(job_dir, w.index).name for w in spec.workers]
            for name in stale:
                (job_dir / name).unlink(missing_ok=True)
            ex.write_json_atomic(
                job_dir / ex.TAG_FILE,
                {
                    "job_id": spec.run_id,
                    "scheduler_job_id": self.scheduler_id(spec),
                    "num_workers": len(spec.workers),
                    "attempt": attempt,
                    "submitted_at": time.time(),
                },
            )
        except OSError as exc:
            raise AdapterError(f"could not prepare job {spec.job_id}: {exc}") from None
        return start_request(spec, cwd, attempt, self.grace_seconds)

    # ---- poll / cancel --------------------------------------------------------------------

    def _workers(self, spec: JobSpec) -> list[WorkerView]:
        return stop_orphans(read_workers(spec))

    def _poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's status, with its usage sampled from the same read of its workers while it
        runs and once it ended (one read and one thread hop, not two)."""
        if scheduler_job_id != self.scheduler_id(spec):
            return BackendStatus(BackendState.UNKNOWN, reason=f"{scheduler_job_id} is not this job")
        workers = self._workers(spec)
        status = job_status(spec, workers, self._submitting)
        if status.state is BackendState.RUNNING or status.state.finished:
            status = dataclasses.replace(status, usage=self._sample(spec, workers))
        return status

    def _cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        if scheduler_job_id != self.scheduler_id(spec):
            raise AdapterError(f"{scheduler_job_id} is not the local job of {spec.job_id}")
        if not any(w.kind == "running" for w in self._workers(spec)):
            return  # finished, lost or never started: nothing to stop (idempotent)
        job_dir = Path(spec.output_dir)
        if not (job_dir / ex.CANCEL_FILE).exists():
            ex.write_json_atomic(job_dir / ex.CANCEL_FILE, {"requested_at": time.time()})
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
        return self._sample(spec, self._workers(spec))

    def _sample(self, spec: JobSpec, views: list[WorkerView]) -> dict[str, Any]:
        usage_file = Path(spec.output_dir) / ex.USAGE_FILE
        record = self._samples.get(spec.run_id) or ex.read_json(usage_file) or {}
        workers: list[tuple[str, dict[str, Any], Any]] = []
        for w in views:
            state = w.state or {}
            proc = command_process(state) if w.kind == "running" else None
            workers.append((w.kind, state, proc))
        sample, record = local_usage.job_usage(usage_file, record, workers)
        if any(kind == "running" for kind, _, _ in workers):
            self._samples[spec.run_id] = record
        else:  # ended: its last sample is in usage.json, and the end in its state files
            self._samples.pop(spec.run_id, None)
        return sample


def create_adapter() -> LocalAdapter:
    """The ``local`` adapter (the entry point of ``apportion.adapters``; it runs anywhere)."""
    return LocalAdapter()
