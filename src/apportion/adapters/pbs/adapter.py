"""The ``pbs`` adapter: run a placed job as one PBS/Torque or OpenPBS job (``qsub``/``qstat``/
``qdel``; seeds 001 and 002's scheduler).

Every command is an argv list (never a shell) with a timeout. A job is submitted *as its user*
(``qsub`` run with the job user's uid, gid and groups) as a two-line batch script that
``exec``\\ s the batch launcher (:mod:`apportion.adapters.batch`: the argv verbatim, the
job id and the exit code recorded) — no word of the user's is in the script. ``qsub -v
APPORTION_RUN_ID=<run id>`` tags the job: :meth:`find` matches it in ``qstat -f``'s
``Variable_List`` when the launcher has not recorded the id yet. The worker is pinned to the
node Apportion placed it on, with its vCPUs, memory and GPUs, in the resource syntax of the
cluster's ``scheduler.flavor``: ``torque`` (the default: ``-l nodes=<node>:ppn=N:gpus=G``) or
``openpbs`` (``-l select=1:host=<node>:ncpus=N:ngpus=G:mem=Mmb``). One worker per job.

Not run against a real PBS here: none can be installed on this machine. Its tests replay
recorded outputs of the real commands through stand-in executables (tests/test_adapter_pbs.py).
PBS copies a job's output file to its path when the job ends, so ``logs`` shows it then.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    usage_document,
)
from apportion.adapters.batch import (
    CANCEL_FILE,
    LOG_FILE,
    BatchAdapter,
    check_one_worker_job,
    ended_by_scheduler,
    recorded_exit,
    recorded_job_id,
    started_at,
    status_after_listing,
    write_launch,
)
from apportion.adapters.pbs.parse import (
    JOB_ID,
    parse_job_id,
    parse_qstat_full,
    queue_names,
    seconds,
    variables,
    walltime,
)
from apportion.adapters.private_files import write_private

TOOLS = ("qsub", "qstat", "qdel", "pbsnodes")
SCRIPT_FILE = "pbs-job.sh"
TAG_VARIABLE = "APPORTION_RUN_ID"
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")  # a node a job may be pinned to
FLAVORS = ("torque", "openpbs")

RUNNING_STATES = frozenset("RESU")  # running, exiting, suspended, suspended by the user
ENDED_STATES = frozenset("CFX")  # completed (Torque), finished / expired (OpenPBS, qstat -x)
GONE = ("Unknown Job Id", "Job has finished", "job has finished")


class PbsAdapter(BatchAdapter):
    """Runs one-worker jobs on PBS/Torque or OpenPBS (see the module's docstring)."""

    name = "pbs"
    scheduler = "PBS"
    tools = TOOLS
    cancel_tool = "qdel"
    job_id = JOB_ID

    # ---------------------------------------------------------------- submit and find
    async def submit(self, spec: JobSpec) -> str:
        """Write the launch files and the batch script, then ``qsub`` as the job's user."""
        found = await self.find(spec)
        if found is not None:
            return found  # a retried dispatch: the job is there already
        check_one_worker_job(spec, "pbs")
        out = spec.output_dir
        args = [
            "-N", _job_name(spec.name), "-o", str(out / LOG_FILE), "-j", "oe",
            "-v", f"{TAG_VARIABLE}={spec.run_id}",
        ]  # fmt: skip
        if spec.walltime_seconds is not None:
            args += ["-l", f"walltime={walltime(spec.walltime_seconds)}"]
        args += ["-l", _resources(spec)]
        script = await asyncio.to_thread(self._write_script, spec)
        _, stdout, _ = await self._run("qsub", *args, script, spec=spec)
        job_id = parse_job_id(stdout)
        if job_id is None:
            raise AdapterError(f"qsub answered {stdout.strip()[:200]!r}, not a job id")
        return job_id

    def _write_script(self, spec: JobSpec) -> str:
        launch = write_launch(spec, prefix="pbs", id_variable="PBS_JOBID")
        run = shlex.join([self.python, "-I", str(launch.launcher), str(launch.launch_file)])
        script = spec.output_dir / SCRIPT_FILE
        write_private(script, f"#!/bin/sh\nexec {run}\n", spec.run_as)
        return str(script)

    async def find(self, spec: JobSpec) -> str | None:
        """PBS's id of the job tagged ``spec.run_id``: as its launcher recorded it, or as
        ``qstat -f`` lists it (not started yet); None when it never got there."""
        recorded = recorded_job_id(spec)
        if recorded is not None:
            return recorded
        _, out, _ = await self._run("qstat", "-f")
        for job in parse_qstat_full(out):
            if variables(job).get(TAG_VARIABLE) == spec.run_id:
                return job["job_id"]
        return None

    # ---------------------------------------------------------------- poll and cancel
    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state from ``qstat -f``; once PBS no longer lists it (or lists it
        completed), how its launcher said it ended."""
        job_id = self.check_id(scheduler_job_id)
        rc, out, err = await self._run("qstat", "-f", job_id, check=False)
        if rc != 0 and not any(words in err for words in GONE):
            raise AdapterError(f"qstat failed (exit {rc}): {err.strip()[:500]}", retryable=True)
        job = next(iter(parse_qstat_full(out)), None) if rc == 0 else None
        state = (job or {}).get("job_state", "")
        if job is not None and state not in ENDED_STATES:
            if state in RUNNING_STATES:
                return BackendStatus(BackendState.RUNNING, started_at=started_at(spec))
            return BackendStatus(BackendState.PENDING)
        exit_status = (job or {}).get("exit_status", "")
        if recorded_exit(spec) is None and re.fullmatch(r"-?[0-9]+", exit_status):
            code = int(exit_status)  # the launcher left no record: PBS's own word
            if code >= 0 and not (spec.output_dir / CANCEL_FILE).exists():
                code = code - 256 + 128 if code > 256 else code  # Torque: 256 + the signal
                return ended_by_scheduler(spec, code, f"exit code {code} from exit_status", "PBS")
        return status_after_listing(spec, scheduler="PBS", cancelled_by="qdel")

    # ---------------------------------------------------------------- output and usage
    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields from ``qstat -f``'s ``resources_used`` while PBS lists the job."""
        job_id = self.check_id(scheduler_job_id)
        rc, out, _ = await self._run("qstat", "-f", job_id, check=False)
        job = next(iter(parse_qstat_full(out)), None) if rc == 0 else None
        if job is None:
            return usage_document()
        memory = re.fullmatch(r"([0-9]+)kb", job.get("resources_used.mem", ""))
        return usage_document(
            cpuSeconds=seconds(job.get("resources_used.cput", "")),
            maxTotalMemory=None if memory is None else int(memory.group(1)) / 1024,  # MB
        )

    async def partitions(self) -> list[dict[str, Any]]:
        """PBS's queues (``qstat -Q``), as ``GET /scheduler/partitions`` shows them."""
        _, out, _ = await self._run("qstat", "-Q")
        return [{"name": q, "adapter": "pbs", "state": "up"} for q in queue_names(out)]


def _job_name(name: str) -> str:
    """A PBS job name: at most 15 characters (Torque's limit), starting with a letter."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:15]
    return cleaned if cleaned[:1].isalpha() else ("j" + cleaned)[:15]


def _resources(spec: JobSpec) -> str:
    """The worker's ``-l`` resources, pinned to its node, in the cluster's flavor."""
    worker = spec.workers[0]
    flavor = str(spec.scheduler.get("flavor", "torque"))
    if flavor not in FLAVORS:
        raise AdapterError(
            f"scheduler.flavor {flavor!r} is no PBS flavor; use {' or '.join(FLAVORS)}"
        )
    node = worker.node_id if HOST.fullmatch(worker.node_id or "") else None
    vcpus, gpus = worker.vcpus or 1, len(worker.gpus)
    if flavor == "torque":
        text = f"nodes={node or 1}:ppn={vcpus}" + (f":gpus={gpus}" if gpus else "")
        return text + (f",mem={worker.memory_mb}mb" if worker.memory_mb else "")
    parts = ["select=1", *([f"host={node}"] if node else []), f"ncpus={vcpus}"]
    parts += [f"ngpus={gpus}"] if gpus else []
    parts += [f"mem={worker.memory_mb}mb"] if worker.memory_mb else []
    return ":".join(parts)


def create_adapter() -> PbsAdapter | None:
    """The ``pbs`` adapter where PBS's commands are (``pbsnodes`` tells PBS from SGE, which
    has a ``qsub`` too; the entry point of ``apportion.adapters``), else None."""
    return PbsAdapter() if shutil.which("pbsnodes") is not None else None
