"""The ``lsf`` adapter: run a placed job as one LSF job (``bsub``/``bjobs``/``bkill``; seeds 001
and 002's scheduler).

Every command is an argv list (never a shell) with a timeout. A job is submitted *as its user*
(``bsub`` run with the job user's uid, gid and groups) to run the batch launcher
(:mod:`apportion.adapters.batch`: the argv verbatim, the job id and the exit code
recorded): ``bsub … python3 -I <launcher> <launch file>`` — two paths of Apportion's, no word
of the user's. ``-J apportion-<run id>`` names (tags) the job, which :meth:`find` looks up
with ``bjobs -J`` when the launcher has not recorded the id yet. The worker is pinned to the
node Apportion placed it on (``-m``), with its slots (``-n``), memory and GPUs (``-R``,
``-gpu``), and its walltime in minutes (``-W``). One worker per job.

Not run against a real LSF here: none can be installed on this machine. Its tests replay
recorded outputs of the real commands through stand-in executables (tests/test_adapter_lsf.py).
"""

from __future__ import annotations

import asyncio
import os
import re
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
from apportion.adapters.lsf.parse import (
    JOB_ID,
    cpu_seconds,
    parse_job_id,
    parse_records,
    queue_names,
)

TOOLS = ("bsub", "bjobs", "bkill", "bqueues")
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")  # a node a job may be pinned to
FIELDS = "jobid stat exit_code exit_reason cpu_used"

PENDING_STATES = frozenset({"PEND", "PSUSP", "WAIT"})
RUNNING_STATES = frozenset({"RUN", "USUSP", "SSUSP", "PROV", "ZOMBI"})
ENDED_STATES = frozenset({"DONE", "EXIT"})


class LsfAdapter(BatchAdapter):
    """Runs one-worker jobs on LSF (see the module's docstring)."""

    name = "lsf"
    scheduler = "LSF"
    tools = TOOLS
    cancel_tool = "bkill"
    job_id = JOB_ID

    def tool_environment(self) -> dict[str, str]:
        """LSF's own variables of the server's environment (where its configuration is)."""
        return {k: v for k, v in os.environ.items() if k in ("LSF_ENVDIR", "LSF_SERVERDIR")}

    async def _records(self, *args: str) -> list[dict[str, str]]:
        rc, out, err = await self._run("bjobs", "-o", FIELDS, "-json", *args, check=False)
        try:
            return parse_records(out)
        except ValueError:
            raise AdapterError(
                f"bjobs failed (exit {rc}): {(err or out).strip()[:500]}", retryable=True
            ) from None

    # ---------------------------------------------------------------- submit and find
    async def submit(self, spec: JobSpec) -> str:
        """Write the launch files, then ``bsub`` as the job's user; LSF's job id."""
        found = await self.find(spec)
        if found is not None:
            return found  # a retried dispatch: the job is there already
        check_one_worker_job(spec, "lsf")
        out = spec.output_dir
        launch = await asyncio.to_thread(write_launch, spec, prefix="lsf", id_variable="LSB_JOBID")
        args = ["-J", _tag(spec), "-o", str(out / LOG_FILE), *_resources(spec)]
        if spec.walltime_seconds is not None:
            args += ["-W", str(max(1, int(-(-spec.walltime_seconds // 60))))]  # minutes, up
        args += [self.python, "-I", str(launch.launcher), str(launch.launch_file)]
        _, stdout, _ = await self._run("bsub", *args, spec=spec)
        job_id = parse_job_id(stdout)
        if job_id is None:
            raise AdapterError(f"bsub answered {stdout.strip()[:200]!r}, not a job id")
        return job_id

    async def find(self, spec: JobSpec) -> str | None:
        """LSF's id of the job tagged ``spec.run_id``: as its launcher recorded it, or as
        ``bjobs -J`` lists it; None when it never got there."""
        recorded = recorded_job_id(spec)
        if recorded is not None:
            return recorded
        for record in await self._records("-a", "-J", _tag(spec)):
            if JOB_ID.fullmatch(record.get("JOBID", "")) and "ERROR" not in record:
                return record["JOBID"]
        return None

    # ---------------------------------------------------------------- poll and cancel
    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state from ``bjobs``; once it ended or LSF forgot it, how its launcher
        said it ended (else LSF's exit code)."""
        job_id = self.check_id(scheduler_job_id)
        record = next(iter(await self._records("-a", job_id)), {})
        state = record.get("STAT", "")
        if "ERROR" not in record and state in PENDING_STATES:
            return BackendStatus(BackendState.PENDING)
        if "ERROR" not in record and state in RUNNING_STATES:
            return BackendStatus(BackendState.RUNNING, started_at=started_at(spec))
        if state == "UNKWN":
            return BackendStatus(
                BackendState.UNKNOWN, reason="LSF lost contact with the job's host"
            )
        if state in ENDED_STATES and recorded_exit(spec) is None:
            cancelled = (spec.output_dir / CANCEL_FILE).exists()
            code = 0 if state == "DONE" else _code(record.get("EXIT_CODE", ""))
            if not cancelled and code is not None:  # the launcher left no record: LSF's word
                reason = record.get("EXIT_REASON") or f"exit code {code}"
                return ended_by_scheduler(spec, code, reason, "LSF")
        return status_after_listing(spec, scheduler="LSF", cancelled_by="bkill")

    # ---------------------------------------------------------------- output and usage
    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields; ``cpuSeconds`` from ``bjobs``' ``CPU_USED``."""
        job_id = self.check_id(scheduler_job_id)
        record = next(iter(await self._records("-a", job_id)), {})
        return usage_document(cpuSeconds=cpu_seconds(record.get("CPU_USED", "")))

    async def partitions(self) -> list[dict[str, Any]]:
        """LSF's queues (``bqueues -w``), as ``GET /scheduler/partitions`` shows them."""
        _, out, _ = await self._run("bqueues", "-w")
        return [{"name": q, "adapter": "lsf", "state": "up"} for q in queue_names(out)]


def _tag(spec: JobSpec) -> str:
    return f"apportion-{spec.run_id}"


def _resources(spec: JobSpec) -> list[str]:
    """``bsub`` options for the worker: its node, slots, memory and GPUs."""
    worker = spec.workers[0]
    options = ["-n", str(worker.vcpus or 1), "-R", "span[hosts=1]"]
    if HOST.fullmatch(worker.node_id or ""):
        options += ["-m", worker.node_id]
    if worker.memory_mb:
        options += ["-R", f"rusage[mem={worker.memory_mb}MB]"]
    if worker.gpus:
        options += ["-gpu", f"num={len(worker.gpus)}"]
    return options


def _code(exit_code: str) -> int | None:
    return int(exit_code) if exit_code.strip().isdigit() else None


def create_adapter() -> LsfAdapter | None:
    """The ``lsf`` adapter where LSF's commands are (the entry point of
    ``apportion.adapters``), else None."""
    return LsfAdapter() if shutil.which("bsub") is not None else None
