"""The backend driver: what a job's scheduler adapter is asked, and what it answered.

:class:`BackendDriver` turns a job record into the adapter's :class:`JobSpec`, calls the adapter
(``submit``, ``find``, ``poll``, ``cancel``, ``usage``) and returns what it saw as a value. It
never writes a job record, never touches a hold and calls nothing back: applying what it saw is
:class:`~apportion.jobs.lifecycle.JobLifecycle`'s job. It is also the one reader of a job's
placements (cluster, nodes and GPUs of each worker): :func:`target` and :meth:`BackendDriver.spec`.

``APPORTION_TEST_CRASH_AT=before_submit|after_submit`` makes the process SIGKILL itself around
the adapter's ``submit``; the crash tests use it, nothing else should.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.adapters.base import (
    Adapter,
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    RunAs,
    WorkerSpec,
)
from apportion.engine.decisions import Placement
from apportion.errors import ApportionError, NotFound
from apportion.files import FileBook, FileType
from apportion.jobs.identity import JobIdentity, python_for_jobs
from apportion.jobs.outputs import collect_outputs
from apportion.jobs.records import Job, ResourceUsage
from apportion.jobs.staging import StagedInput, stage_inputs
from apportion.registry.service import Registry
from apportion.thread_batch import ThreadBatch

log = logging.getLogger(__name__)


USER_SIDE_ADAPTERS = ("slurm", "sge")
"""Adapters whose scheduler's daemons open a job's log, and whose launcher reads its files, as
the job's user: their files are under the jobs root, in a directory of that user's."""


LOG_OUTPUT_NAME = "process_output.log"
"""The output file a job's log is stored as, with ``keep_log`` (seed 003's name)."""


def crash_point(step: str) -> None:
    """Die here, like a power cut, when the crash tests ask for it."""
    if os.environ.get("APPORTION_TEST_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Target:
    """Where a placed job runs: its cluster, that cluster's adapter and its nodes, in words."""

    cluster_id: str
    adapter: str
    nodes: str  # "n1, n2": the nodes of its workers, sorted


@dataclass(frozen=True)
class Submitted:
    """The adapter accepted the job under this backend id."""

    scheduler_job_id: str


@dataclass(frozen=True)
class SubmitFailed:
    """The adapter refused or failed; ``reason`` goes into the job's history."""

    reason: str


@dataclass(frozen=True)
class Observation:
    """One poll of a dispatched job: the backend's status, and its usage when the backend
    reported some (while it runs and once it ended)."""

    status: BackendStatus
    usage: ResourceUsage | None = None


def _cluster_of(placements: Sequence[Placement]) -> str:
    return placements[0].cluster_id if placements else ""


class BackendDriver:
    """Asks a job's adapter and reports the answer. Called by the job lifecycle only (and by
    the log route, through :meth:`adapter_for` and :meth:`spec`)."""

    def __init__(
        self,
        registry: Registry,
        adapters: Mapping[str, Adapter],
        server_dir: Path,
        *,
        identity: JobIdentity,
        jobs_root: Path,
        files: FileBook,
    ) -> None:
        """``server_dir``: where the ``local`` adapter keeps its jobs' files, the server's
        alone (``Settings.local_jobs_dir``); ``files``: the stored files a job's
        ``input_files`` name (staged at dispatch)."""
        self._registry = registry
        self.adapters = adapters
        self._jobs_dir = server_dir  # the adapters' own files: the server's alone
        self.identity = identity
        self.jobs_root = jobs_root  # each job's default working directory, as its user
        self.files = files
        self._specs: dict[str, JobSpec] = {}
        self._dirs_prepared: ThreadBatch[tuple[JobSpec, RunAs | None, str | None], None] = (
            ThreadBatch(lambda call: self._prepare_dirs(*call))  # many dispatches, one hop
        )

    # ---------------------------------------------------------------- placements
    def _scheduler_of(self, cluster_id: str) -> dict[str, Any] | None:
        if not self._registry.has_cluster(cluster_id):
            return None
        scheduler = self._registry.get_cluster(cluster_id).get("config", {}).get("scheduler")
        return dict(scheduler) if scheduler else None

    def scheduler_type(self, cluster_id: str) -> str:
        """The adapter a job placed on ``cluster_id`` is dispatched to: its scheduler's
        ``type`` (``local`` when the cluster names none)."""
        return str((self._scheduler_of(cluster_id) or {}).get("type", "local"))

    def target(self, placements: Sequence[Placement]) -> Target:
        """The cluster, adapter and nodes of a job's placements (one cluster per job)."""
        cluster_id = _cluster_of(placements)
        nodes = ", ".join(sorted({str(p.node_id) for p in placements}))
        return Target(cluster_id, self.scheduler_type(cluster_id), nodes)

    def spec(self, job: Job) -> JobSpec:
        """The adapter's view of a job (cached until :meth:`forget`; derived from the record)."""
        cached = self._specs.get(job.job_id)
        if cached is not None:
            return cached
        placements = job.allocation or ()
        cluster_id = _cluster_of(placements)
        scheduler = self._scheduler_of(cluster_id) or {"type": job.adapter or "local"}
        resources = job.config.resources
        try:
            run_as = self.identity.run_as(job)
        except AdapterError:
            run_as = None  # submit refuses it (see submit); poll and cancel need no identity
        adapter = job.adapter or str(scheduler.get("type", "local"))
        spec = JobSpec(
            job_id=job.job_id,
            name=job.name,
            command=tuple(job.config.command),
            cluster_id=cluster_id,
            scheduler=scheduler,
            workers=tuple(
                WorkerSpec(
                    index=i,
                    node_id=p.node_id or "",
                    gpus=p.gpus or (),
                    vcpus=resources.vcpus,
                    memory_mb=resources.memory_mb,
                )
                for i, p in enumerate(placements)
            ),
            output_dir=self._output_dir(
                job.job_id if job.runs == 0 else f"{job.job_id}.{job.runs}", adapter
            ),
            env=dict(job.config.env),
            working_dir=job.config.working_dir or str(self.jobs_root / job.job_id),
            walltime_seconds=job.config.walltime,
            labels=dict(job.config.labels),
            run_as=run_as,
            run=job.runs,
            image=job.config.image,
        )
        self._specs[job.job_id] = spec
        return spec

    def _output_dir(self, run_id: str, adapter: str) -> Path:
        """Where the adapter keeps a job run's files (``run_id``: the job's id, ``.N`` after
        its N-th requeue): in the server's directory for ``local`` (its executor runs as the
        server; one per directory, ``<data dir>/jobs`` or ``<jobs root>/.local``); for Slurm and SGE, whose daemons open the log and whose launcher
        reads its file as the job's user, under the jobs root (``.slurm/<job id>``,
        ``.sge/<job id>``)."""
        if adapter in USER_SIDE_ADAPTERS:
            return self.jobs_root / f".{adapter}" / run_id
        return self._jobs_dir / run_id

    def forget(self, job_id: str) -> None:
        """Drop what is cached for a job that ended."""
        self._specs.pop(job_id, None)

    def adapter_for(self, job: Job) -> Adapter:
        """The job's adapter; :class:`AdapterError` if this server has none of that name."""
        name = job.adapter or "local"
        adapter = self.adapters.get(name)
        if adapter is None:
            raise AdapterError(
                f"no {name!r} scheduler adapter is configured on this server "
                f"(available: {', '.join(sorted(self.adapters))})"
            )
        return adapter

    # ---------------------------------------------------------------- calls
    async def submit(self, job: Job) -> Submitted | SubmitFailed:
        """Hand the job to its adapter (tagged with its id, so :meth:`find` can tell after a
        crash whether it got there). Never raises but for cancellation: a failure is a value."""
        spec = self.spec(job)
        try:
            adapter = self.adapter_for(job)
            run_as = self.identity.run_as(job)  # refused here too, not only at submit
            await self._dirs_prepared((spec, run_as, job.config.working_dir))
            await self._stage_inputs(job, spec, run_as)
            crash_point("before_submit")
            scheduler_job_id = await adapter.submit(spec)
            crash_point("after_submit")
        except AdapterError as exc:
            return SubmitFailed(f"dispatch failed: {exc.message}")
        except Exception as exc:
            log.exception("dispatch of job %s failed", job.job_id)
            return SubmitFailed(f"dispatch failed: {exc}")
        return Submitted(scheduler_job_id)

    def _prepare_dirs(self, spec: JobSpec, run_as: RunAs | None, asked: str | None) -> None:
        """Create a job's directories before its adapter starts it. Its output directory is
        0700: the server's in the data dir (``local``), the job user's under the jobs root
        (Slurm). When the job named no working directory, its default one,
        ``<jobs root>/<job id>``, is created 0700 and owned by its user. The jobs root and its
        ``.slurm`` are 0711: each user reaches its own directory and lists no other."""
        self._jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._jobs_dir, 0o700)
        user_side = [self.jobs_root / f".{name}" for name in USER_SIDE_ADAPTERS]
        for shared in (self.jobs_root, *user_side):
            shared.mkdir(parents=True, exist_ok=True)
            os.chmod(shared, 0o711)  # noqa: S103 - traverse only, no listing
        spec.output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(spec.output_dir, 0o700)
        theirs = [spec.output_dir] if spec.output_dir.parent in user_side else []
        if asked is None and spec.working_dir is not None:
            Path(spec.working_dir).mkdir(exist_ok=True, mode=0o700)
            theirs.append(Path(spec.working_dir))
        if run_as is not None:
            for path in theirs:
                os.chown(path, run_as.uid, run_as.gid)

    async def _stage_inputs(self, job: Job, spec: JobSpec, run_as: RunAs | None) -> None:
        """Write the job's ``input_files`` into its working directory, as its user
        (:mod:`apportion.jobs.staging`); :class:`AdapterError` for a file that is gone."""
        wanted = job.config.input_files
        if not wanted or spec.working_dir is None:
            return
        inputs: list[StagedInput] = []
        for each in wanted:
            try:
                record = self.files.get(each.id, visible=lambda o: o.account == job.owner.account)
            except NotFound:
                raise AdapterError(
                    f"input file {each.id} was deleted after the job was submitted"
                ) from None
            inputs.append(StagedInput(record, each.decompress))
        await stage_inputs(
            inputs,
            {i.record.file_id: self.files.content(i.record) for i in inputs},
            Path(spec.working_dir),
            run_as,
            python=python_for_jobs(),
            max_bytes=self.files.limits.max_account_bytes,
        )

    async def collect_outputs(self, job: Job) -> str:
        """Store the job's ``output_files`` (:mod:`apportion.jobs.outputs`) from its working
        directory, as its user, and its log when it asks (``keep_log``); what was done, in
        words ("" when it asks for neither). Never raises: what went wrong is in the words."""
        said = [await self._collect_files(job), await self._keep_log(job)]
        return "; ".join(words for words in said if words)

    async def _collect_files(self, job: Job) -> str:
        spec = self.spec(job)
        if not job.config.output_files or spec.working_dir is None:
            return ""
        try:
            run_as = self.identity.run_as(job)
            return await collect_outputs(
                job, Path(spec.working_dir), run_as, self.files, python=python_for_jobs()
            )
        except (AdapterError, OSError) as exc:
            log.warning("collecting the outputs of job %s failed: %s", job.job_id, exc)
            return f"output files not registered: {exc}"

    async def _keep_log(self, job: Job) -> str:
        """Store the job's whole output, as its adapter serves it, as the output file
        :data:`LOG_OUTPUT_NAME` (seed 003's ``process_output.log``)."""
        if not job.config.keep_log or job.scheduler_job_id is None:
            return ""
        adapter, spec, scheduler_job_id = (
            self.adapter_for(job),
            self.spec(job),
            job.scheduler_job_id,
        )

        async def chunks() -> AsyncIterator[bytes]:
            offset = 0
            while True:
                chunk = await adapter.logs(spec, scheduler_job_id, offset=offset, limit=1 << 20)
                yield chunk.text.encode()
                if chunk.offset == offset or (chunk.complete and chunk.offset >= chunk.size):
                    return
                offset = chunk.offset

        try:
            record = await self.files.receive(
                job.owner, LOG_OUTPUT_NAME, FileType.OUTPUT, chunks(), job_id=job.job_id
            )
        except (AdapterError, ApportionError, OSError) as exc:
            log.warning("keeping the log of job %s failed: %s", job.job_id, exc)
            return f"its log was not stored: {getattr(exc, 'message', exc)}"
        return f"its log stored as {LOG_OUTPUT_NAME} ({record.size} bytes)"

    async def clean(self, job: Job) -> str:
        """Remove an ended job's own working directory (``<jobs root>/<job id>``, made for it
        because it named none); never a directory the job, its queue or its application named,
        nor its logs and stored outputs. What was done, in words; :class:`OSError` when the
        directory cannot be removed. Links inside are removed, never followed."""
        if job.config.working_dir is not None:
            return (
                f"nothing removed: the job ran in {job.config.working_dir}, a directory it was"
                " given, not one made for it"
            )
        own = self.jobs_root / job.job_id
        if not await asyncio.to_thread(os.path.lexists, own):
            return "nothing to remove: its working directory is gone"
        await asyncio.to_thread(shutil.rmtree, own)
        return f"removed its working directory {own}"

    async def find(self, job: Job) -> str | None:
        """The backend's id of the job if it reached its backend, else ``None``; raises
        :class:`AdapterError` when the backend cannot tell."""
        return await self.adapter_for(job).find(self.spec(job))

    async def poll(self, job: Job) -> Observation:
        """The backend's status of a dispatched job, with its usage while it runs and once it
        ended (a backend that has no usage to give is logged, not an error)."""
        assert job.scheduler_job_id is not None, "poll needs a dispatched job"
        adapter, spec = self.adapter_for(job), self.spec(job)
        status = await adapter.poll(spec, job.scheduler_job_id)
        usage = None
        if status.usage is not None:  # sampled with the status
            usage = ResourceUsage.of(status.usage)
        elif status.state is BackendState.RUNNING or status.state.finished:
            try:
                usage = ResourceUsage.of(await adapter.usage(spec, job.scheduler_job_id))
            except AdapterError as exc:
                log.debug("no usage for job %s: %s", job.job_id, exc.message)
        return Observation(status, usage)

    async def cancel(self, job: Job) -> None:
        """Ask the backend to stop a dispatched job (idempotent); the end is seen by a poll."""
        assert job.scheduler_job_id is not None, "cancel needs a dispatched job"
        await self.adapter_for(job).cancel(self.spec(job), job.scheduler_job_id)
