"""The ``sge`` adapter: run a placed job as one Son of Grid Engine job (``qsub``/``qstat``/
``qdel``/``qacct``; seed 002's scheduler).

Every SGE command is an argv list run with ``asyncio.create_subprocess_exec`` (never a shell)
and a timeout. A job is submitted *as its user* (``qsub`` run with the job user's uid, gid and
groups; SGE then runs it as that user), in binary mode (``-b y``) of the batch launcher
(:mod:`apportion.adapters.batch`: the argv verbatim, never a shell; SGE's job id and the
exit code recorded), so that :meth:`find` works after a server restart and :meth:`poll` knows
how a job ended without waiting for SGE's accounting. ``qsub -N apportion-<run id>``
names the job (the tag). A worker's vCPUs are reserved as slots of its host in the parallel
environment ``smp`` (``qsub -pe smp N``; the cluster's ``scheduler.parallel_environment``
names another), as seed 002 reserves ``reservedSlots``. One worker per job: a gang of several
would need one started on each host by ``qrsh -inherit``, which this adapter does not do
(refused, saying so).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import xml.etree.ElementTree as ET
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    usage_document,
)
from apportion.adapters.batch import (
    LOG_FILE,
    BatchAdapter,
    check_one_worker_job,
    recorded_job_id,
    started_at,
    status_after_listing,
    write_launch,
)

SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
TOOLS = ("qsub", "qstat", "qdel", "qacct", "qconf")
JOB_ID = re.compile(r"[0-9]+")
PE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class SgeAdapter(BatchAdapter):
    """Runs one-worker jobs on a Son of Grid Engine cell (see the module's docstring)."""

    name = "sge"
    scheduler = "SGE"
    tools = TOOLS
    cancel_tool = "qdel"
    job_id = JOB_ID

    def tool_environment(self) -> dict[str, str]:
        """Where the SGE cell is."""
        return dict(SGE_ENV)

    # ---------------------------------------------------------------- submit and find
    async def submit(self, spec: JobSpec) -> str:
        """Write the launch files, then ``qsub`` as the job's user; SGE's job id."""
        found = await self.find(spec)
        if found is not None:
            return found  # a retried dispatch: the job is there already
        check_one_worker_job(spec, "sge")
        out = spec.output_dir
        launch = await asyncio.to_thread(write_launch, spec, prefix="sge", id_variable="JOB_ID")
        args = ["-terse", "-b", "y", "-N", _tag(spec), "-o", str(out / LOG_FILE), "-j", "y"]
        if spec.walltime_seconds is not None:
            args += ["-l", f"h_rt={int(spec.walltime_seconds) + 1}"]
        vcpus = spec.workers[0].vcpus
        if vcpus is not None and vcpus > 1:  # its vCPUs as slots of its one host
            environment = str(spec.scheduler.get("parallel_environment", "smp"))
            if PE_NAME.fullmatch(environment) is None:
                raise AdapterError(
                    f"scheduler.parallel_environment {environment!r} is no SGE parallel"
                    " environment name"
                )
            args += ["-pe", environment, str(vcpus)]
        args += [self.python, "-I", str(launch.launcher), str(launch.launch_file)]
        _, stdout, _ = await self._run("qsub", *args, spec=spec)
        job_id = stdout.strip().split(".")[0]
        if JOB_ID.fullmatch(job_id) is None:
            raise AdapterError(f"qsub answered {stdout.strip()[:200]!r}, not a job id")
        return job_id

    async def find(self, spec: JobSpec) -> str | None:
        """SGE's id of the job tagged ``spec.run_id``: as its launcher recorded it, or as
        ``qstat`` lists it (not started yet); None when it never got there."""
        recorded = recorded_job_id(spec)
        if recorded is not None:
            return recorded
        tag = _tag(spec)
        for job in await self._qstat():
            if job["name"] == tag:
                return job["id"]
        return None

    async def _qstat(self) -> list[dict[str, str]]:
        """Every job SGE lists now: ``{id, name, state}``."""
        _, out, _ = await self._run("qstat", "-xml", "-u", "*")
        try:
            root = ET.fromstring(out)  # noqa: S314 - the local qstat's own output
        except ET.ParseError as exc:
            raise AdapterError(f"qstat -xml answered something else: {exc}") from None
        return [
            {
                "id": job.findtext("JB_job_number", ""),
                "name": job.findtext("JB_name", ""),
                "state": job.findtext("state", ""),
            }
            for job in root.iter("job_list")
        ]

    # ---------------------------------------------------------------- poll and cancel
    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state: SGE's while it lists the job, else how its launcher said it ended."""
        job_id = self.check_id(scheduler_job_id)
        listed = next((j for j in await self._qstat() if j["id"] == job_id), None)
        started = started_at(spec)
        if listed is not None:
            state = listed["state"]
            if "E" in state:
                await self._run("qdel", "-f", job_id, check=False)
                return BackendStatus(
                    BackendState.FAILED,
                    reason=f"SGE put the job in error state ({state}): qstat -j {job_id} says why",
                    never_started=started is None,
                )
            if state.startswith(("r", "t", "R")) or "d" in state:
                return BackendStatus(BackendState.RUNNING, started_at=started)
            return BackendStatus(BackendState.PENDING)
        return status_after_listing(spec, scheduler="SGE", cancelled_by="qdel")

    # ---------------------------------------------------------------- output and usage
    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields; ``cpuSeconds`` from ``qacct`` once SGE has accounted the job."""
        job_id = self.check_id(scheduler_job_id)
        rc, out, _ = await self._run("qacct", "-j", job_id, check=False)
        cpu = None
        for line in out.splitlines() if rc == 0 else []:
            key, _, value = line.partition(" ")
            if key == "cpu":
                cpu = _number(value.strip().rstrip("s"))
        return usage_document(cpuSeconds=cpu)

    async def partitions(self) -> list[dict[str, Any]]:
        """SGE's cluster queues, as ``GET /scheduler/partitions`` shows them."""
        _, out, _ = await self._run("qconf", "-sql")
        return [{"name": q, "adapter": "sge", "state": "up"} for q in out.split() if q]


def _tag(spec: JobSpec) -> str:
    return f"apportion-{spec.run_id}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def create_adapter() -> SgeAdapter | None:
    """The ``sge`` adapter where SGE's commands are (``qconf`` tells SGE from PBS, which has a
    ``qsub`` too; the entry point of ``apportion.adapters``), else None."""
    return SgeAdapter() if shutil.which("qconf") is not None else None
