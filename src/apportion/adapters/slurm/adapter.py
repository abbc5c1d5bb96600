"""The ``slurm`` adapter: run a placed job as one Slurm batch job (``sbatch``/``squeue``/``scancel``).

The job engine calls it like any :class:`~apportion.adapters.base.Adapter`. Every Slurm
command is an argv list run with ``asyncio.create_subprocess_exec`` (never a shell) and a timeout.

The batch script and the launcher that runs the user's argv verbatim (no shell) are written by
``slurm_script.py``.

Names that reach Slurm (job id tag, job name, partition, account, qos, node names) must match
:data:`~apportion.adapters.slurm.script.NAME_PATTERN` (no newline, no spaces);
anything else is refused with :class:`AdapterError` before any command runs. With ``spec.run_as``
(the server is root) the job is submitted with ``sbatch --uid --gid`` (Slurm 22.05: root only),
so ``slurmstepd`` runs it — and Slurm's accounting and limits see it — as the job's user; its log
and launch file are then in ``spec.output_dir`` under the jobs root, owned by that user. The tag ``apportion:<job_id>`` is the ``--comment`` and starts the
``--job-name`` (``apportion:<job_id>:<name>``), so :meth:`find` works after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
)
from apportion.adapters.commands import run_command
from apportion.adapters.logfile import read_chunk
from apportion.adapters.slurm.parse_jobs import (
    SlurmJob,
    parse_sacct,
    parse_scontrol_job,
    parse_squeue,
    sacct_cpu_seconds,
    status_of,
)
from apportion.adapters.slurm.parse_nodes import (
    SlurmNode,
    node_data,
    parse_gpu_gres,
    parse_scontrol_partitions,
    parse_sinfo_nodes,
)
from apportion.adapters.slurm.parse_text import format_walltime, parse_sbatch_parsable
from apportion.adapters.slurm.script import Layout, check_name, job_layout, write_script

SQUEUE_REUSE_SECONDS = 0.2  # polls within this of a listing's start share it
TOOLS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct")
LOG_FILE = "output.log"
_USAGE_KEYS = (
    "cpuSeconds",
    "memoryCpuSeconds",
    "instantTotalMemory",
    "maxTotalMemory",
    "processIO",
    "processIOWaiting",
)


class SlurmAdapter:
    """Runs jobs on a Slurm cluster through its command-line tools (see the module docstring).

    ``binaries`` maps tool names (``sbatch`` … ``sacct``) to paths (default: found on PATH);
    ``grace_seconds`` is how long :meth:`cancel` waits for Slurm to report the job finished (the
    SIGTERM → SIGKILL delay itself is the cluster's ``KillWait``); ``command_timeout`` bounds each
    Slurm command; ``python`` is the interpreter the batch script runs the launcher with.
    """

    name = "slurm"

    def __init__(
        self,
        *,
        binaries: dict[str, str] | None = None,
        grace_seconds: float = 10.0,
        command_timeout: float = 30.0,
        python: str = "python3",
    ) -> None:
        unknown = set(binaries or {}) - set(TOOLS)
        if unknown:
            raise ValueError(f"unknown Slurm tools {sorted(unknown)}; known: {', '.join(TOOLS)}")
        self._bin = {t: (binaries or {}).get(t) or shutil.which(t) or t for t in TOOLS}
        self.grace_seconds = grace_seconds
        self.command_timeout = command_timeout
        self.python = python
        self.accounting: bool | None = None  # None: not yet known; False after "disabled"
        self._listing: tuple[float, list[SlurmJob]] | None = None  # (started, jobs)
        self._listing_call: asyncio.Future[list[SlurmJob]] | None = None

    # -- running Slurm commands -------------------------------------------------------------

    async def _run(self, tool: str, *args: str, check: bool = True) -> tuple[int, str, str]:
        """Run one Slurm tool; ``(returncode, stdout, stderr)``; AdapterError if it fails."""
        rc, out, err = await run_command(
            [self._bin[tool], *args], what=tool, within_seconds=self.command_timeout
        )
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise AdapterError(
                f"{tool} failed (exit {rc}): {stderr.strip()[:500] or stdout.strip()[:500]}",
                retryable="contact" in stderr or "timed out" in stderr,
            )
        return rc, stdout, stderr

    async def _squeue(self) -> list[SlurmJob]:
        """Every job ``squeue`` lists, now."""
        return parse_squeue((await self._run("squeue", "--json"))[1])

    async def _squeue_shared(self) -> list[SlurmJob]:
        """The ``squeue`` listing for polls: one call serves every poll that asks while it
        runs, and a listing started less than :data:`SQUEUE_REUSE_SECONDS` ago is reused — the
        watch polls many jobs at once, and each would otherwise list every job."""
        cached = self._listing
        if cached is not None and time.monotonic() - cached[0] < SQUEUE_REUSE_SECONDS:
            return cached[1]
        if self._listing_call is None or self._listing_call.done():
            started = time.monotonic()

            async def listing() -> list[SlurmJob]:
                jobs = await self._squeue()
                self._listing = (started, jobs)
                return jobs

            self._listing_call = asyncio.ensure_future(listing())
        return await asyncio.shield(self._listing_call)

    async def _sacct(self, *args: str) -> list[SlurmJob] | None:
        """Jobs from ``sacct --json``, or ``None`` when the cluster has no accounting."""
        if self.accounting is False:
            return None
        rc, out, err = await self._run("sacct", "--json", "-X", *args, check=False)
        if rc != 0 and "disabled" in (err + out):
            self.accounting = False
            return None
        if rc != 0:
            raise AdapterError(f"sacct failed (exit {rc}): {err.strip()[:500]}", retryable=True)
        self.accounting = True
        return parse_sacct(out)

    # -- the Adapter interface ----------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> str:
        """Write the batch script and launch file into ``spec.output_dir`` and ``sbatch`` them.

        Returns Slurm's job id. Raises AdapterError for a name that may not reach Slurm, workers
        that one Slurm job cannot express, or sbatch refusing the job.
        """
        layout = job_layout(spec)
        args = self._sbatch_args(spec, layout)
        script_path = await asyncio.to_thread(write_script, spec, layout, self.python)
        _, out, _ = await self._run("sbatch", *args, str(script_path))
        return parse_sbatch_parsable(out)

    def _sbatch_args(self, spec: JobSpec, layout: Layout) -> list[str]:
        tag = f"apportion:{check_name(spec.run_id, 'job id')}"
        job_name = f"{tag}:{check_name(spec.name, 'job name')}" if spec.name else tag
        log = str(spec.output_dir / LOG_FILE)
        if "%" in log or "\n" in log:
            raise AdapterError(
                f"output_dir {str(spec.output_dir)!r} may not contain '%' or newline"
            )
        wd = spec.working_dir or str(spec.output_dir)
        if "\n" in wd or not wd.startswith("/"):
            raise AdapterError(f"working_dir {wd!r} must be an absolute path without newline")
        args = [
            "--parsable",
            f"--job-name={job_name}",
            f"--comment={tag}",
            f"--output={log}",
            f"--error={log}",
            f"--chdir={wd}",
            "--export=NONE",
            "--no-requeue",
            f"--nodes={len(layout.nodes)}",
            f"--ntasks={len(spec.workers)}",
            f"--ntasks-per-node={layout.per_node}",
            f"--nodelist={','.join(layout.nodes)}",
        ]
        if spec.run_as is not None:  # root submits as the job's user: Slurm runs it as them
            args += [f"--uid={spec.run_as.uid}", f"--gid={spec.run_as.gid}"]
        for key in ("partition", "account", "qos"):
            value = spec.scheduler.get(key)
            if value is not None:
                args.append(f"--{key}={check_name(value, key)}")
        if layout.gpus:
            args.append(f"--gres=gpu:{layout.gpus * layout.per_node}")
        if layout.vcpus:
            args.append(f"--cpus-per-task={layout.vcpus}")
        if layout.memory_mb:
            args.append(f"--mem={layout.memory_mb * layout.per_node}")
        if spec.walltime_seconds is not None:
            if spec.walltime_seconds <= 0:
                raise AdapterError(f"walltime must be positive, got {spec.walltime_seconds}")
            args.append(f"--time={format_walltime(spec.walltime_seconds)}")
        return args

    async def find(self, spec: JobSpec) -> str | None:
        """Slurm's id of the job tagged ``apportion:<spec.run_id>`` (the lowest if several)."""
        tag = f"apportion:{check_name(spec.run_id, 'job id')}"
        jobs = await self._squeue()
        hits = [j for j in jobs if _tagged(j, tag)]
        if not hits:
            hits = [j for j in await self._sacct("--starttime=now-30days") or [] if _tagged(j, tag)]
        return min((j.job_id for j in hits), key=int, default=None)

    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state: ``squeue``; once it left squeue, ``sacct`` or ``scontrol show job``."""
        job_id = _check_id(scheduler_job_id)
        for job in await self._squeue_shared():
            if job.job_id == job_id:
                return _with_exit_codes(status_of(job), spec)
        acct = await self._sacct(f"--jobs={job_id}")
        for job in acct or []:
            if job.job_id == job_id:
                return _with_exit_codes(status_of(job), spec)
        rc, out, _ = await self._run("scontrol", "show", "job", "-o", job_id, check=False)
        found = parse_scontrol_job(out) if rc == 0 else None
        if found is not None and found.job_id == job_id:
            return _with_exit_codes(status_of(found), spec)
        return BackendStatus(
            BackendState.UNKNOWN,
            reason=f"Slurm has no record of job {job_id} (older than MinJobAge, no accounting)",
        )

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """``scancel`` the job (a finished or unknown job is not an error), then wait up to
        ``grace_seconds`` for Slurm to report it finished."""
        job_id = _check_id(scheduler_job_id)
        await self._run("scancel", job_id)
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline:
            status = await self.poll(spec, job_id)
            if status.state.finished or status.state is BackendState.UNKNOWN:
                return
            await asyncio.sleep(0.2)

    async def logs(
        self,
        spec: JobSpec,
        scheduler_job_id: str,
        *,
        offset: int = 0,
        limit: int = 65536,
        worker: int | None = None,
    ) -> LogChunk:
        """Text of the job's output file (stdout and stderr together, every worker's) from byte
        ``offset``; Slurm keeps one file per job, so ``worker`` is refused."""
        if worker is not None:
            raise AdapterError(
                "a Slurm job's output is one file for all its workers; read it without a worker"
            )
        job_id = _check_id(scheduler_job_id)
        finished = (await self.poll(spec, job_id)).state.finished  # before reading: no lost tail
        log = spec.output_dir / LOG_FILE
        return await asyncio.to_thread(read_chunk, log, offset, limit, finished=finished)

    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields. Only ``cpuSeconds`` is known, and only with accounting (slurmdbd);
        every other value is None (Slurm keeps no per-job memory/IO without jobacct_gather)."""
        job_id = _check_id(scheduler_job_id)
        result: dict[str, Any] = dict.fromkeys(_USAGE_KEYS)
        result["timeInstant"] = time.time()
        if self.accounting is not False:
            rc, out, err = await self._run("sacct", "--json", "-X", f"--jobs={job_id}", check=False)
            if rc == 0:
                self.accounting = True
                result["cpuSeconds"] = sacct_cpu_seconds(out, job_id)
            elif "disabled" in out + err:
                self.accounting = False
        return result

    async def node_states(self) -> list[SlurmNode]:
        """Every node as ``sinfo --json`` reports it now (state, CPUs, GRES in use, load)."""
        return parse_sinfo_nodes((await self._run("sinfo", "--json"))[1])

    async def partitions(self) -> list[dict[str, Any]]:
        """Slurm's partitions with node count, CPUs and GPUs (total and in use) from sinfo."""
        _, out, _ = await self._run("scontrol", "show", "partition", "-o")
        parts = parse_scontrol_partitions(out)
        nodes = parse_sinfo_nodes((await self._run("sinfo", "--json"))[1])
        for p in parts:
            members = [n for n in nodes if p["name"] in n.partitions]
            p["scheduler"] = "slurm"
            p["totalGpus"] = sum(c for n in members for _, c in parse_gpu_gres(n.gres))
            p["usedGpus"] = sum(c for n in members for _, c in parse_gpu_gres(n.gres_used))
        return parts

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        """``nodeData`` of the nodes in ``scheduler["partition"]`` (all nodes if none), sorted by id.

        GPU memory comes from ``scheduler["gpu_memory_mb"]`` (default 0: unknown to Slurm)."""
        partition = scheduler.get("partition")
        if partition is not None:
            check_name(partition, "partition")
        mem = scheduler.get("gpu_memory_mb", 0)
        if not isinstance(mem, int) or isinstance(mem, bool) or mem < 0:
            raise AdapterError(f"gpu_memory_mb must be a whole number of MB >= 0, got {mem!r}")
        nodes = parse_sinfo_nodes((await self._run("sinfo", "--json"))[1])
        if partition is not None:
            nodes = [n for n in nodes if partition in n.partitions]
        return node_data(nodes, gpu_memory_mb=mem)


def _tagged(job: SlurmJob, tag: str) -> bool:
    return job.comment == tag or job.name == tag or job.name.startswith(tag + ":")


def _check_id(scheduler_job_id: str) -> str:
    if not scheduler_job_id.isdigit() or not scheduler_job_id.isascii():
        raise AdapterError(f"not a Slurm job id: {scheduler_job_id!r}")
    return scheduler_job_id


def _with_exit_codes(status: BackendStatus, spec: JobSpec) -> BackendStatus:
    """A one-worker job's exit code is its worker's; Slurm keeps one code per job step, not
    per task, so a gang's workers' own codes are not known (``exit_codes`` stays empty)."""
    if len(spec.workers) == 1 and status.state.finished and status.return_code is not None:
        return dataclasses.replace(status, exit_codes=(status.return_code,))
    return status


def create_adapter() -> SlurmAdapter | None:
    """The ``slurm`` adapter where Slurm's commands are (the entry point of
    ``apportion.adapters``), else None."""
    return SlurmAdapter() if shutil.which("sbatch") is not None else None
