"""Seed 002's API (hpc-queue-api's ``/jobs/``) under ``/hpc/``, over Apportion's own jobs
(docs/seeds.md).

A thin translation: a job is ``{name, workingDirectory, reservedSlots, scriptFile, args}`` —
``scriptFile`` run with ``args`` (an argv list, never a shell string) in ``workingDirectory``
(under the job boundary's allowed roots, as every job's), with ``reservedSlots`` vCPUs, as
``qsub -pe orte <slots>`` reserves them — and its status is one of seed 002's names: queued
``START_REQUESTED``, scheduled ``STARTING``, running ``RUNNING``, every end ``STOPPED``.
``DELETE`` stops the job (as ``qdel``; 202) and keeps its record, which then reads ``STOPPED``.
``GET /hpc/programs/`` lists Apportion's applications as seed 002's ``Program``s.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from apportion.errors import Conflict, Forbidden, NotFound
from apportion.jobs.applications import Application
from apportion.jobs.models import JobStatus, parse_model
from apportion.jobs.records import Job
from apportion.server.auth import Scope, principal_of
from apportion.server.http_common import json_body, json_response
from apportion.server.routes_jobs import changeable_job, job_service, visible_job, visible_jobs
from apportion.server.routing import ApiRoutes, query_of

api = ApiRoutes("seed 002 (hpc-queue-api)", on_leader=True)

PREFIX = "/hpc"

STATUS_NAMES = {
    JobStatus.CREATED: "START_REQUESTED",
    JobStatus.QUEUED: "START_REQUESTED",
    JobStatus.SCHEDULED: "STARTING",
    JobStatus.RUNNING: "RUNNING",
    JobStatus.COMPLETED: "STOPPED",
    JobStatus.FAILED: "STOPPED",
    JobStatus.CANCELLED: "STOPPED",
}
"""Seed 002's name of each job status."""


class HpcJob(BaseModel):
    """``POST /hpc/jobs/``'s body: seed 002's ``Job``; the fields the server sets (jobId,
    status, times, clusterId, resourceUsage) may be sent as null, as its README does."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr | None = Field(None, max_length=100)
    workingDirectory: StrictStr = Field(max_length=4096)
    reservedSlots: StrictInt = Field(ge=1, le=4096)
    scriptFile: StrictStr = Field(min_length=1, max_length=4096)
    args: list[StrictStr] = Field(default_factory=list, max_length=4096)
    jobId: None = None
    status: None = None
    startTime: None = None
    lastStatusUpdateTime: None = None
    endTime: None = None
    clusterId: None = None
    resourceUsage: None = None


class ProgramsQuery(BaseModel):
    """``GET /hpc/programs/``: only the programs of this name, of this version."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    version: str | None = Field(None, max_length=100)


def program_object(app: Application) -> dict[str, Any]:
    """An application as seed 002 shows a program: its command is the executable and its
    arguments; ``installationDirectory`` and ``clusterId`` come from its attributes
    ``installation_directory`` and ``cluster_id`` when it has them."""
    config = app.config
    return {
        "programId": app.id,
        "name": config.name,
        "clusterId": config.attributes.get("cluster_id"),
        "version": config.version,
        "installationDirectory": config.attributes.get("installation_directory"),
        "isManaged": True,  # registered and run through Apportion
        "executablePath": config.command[0] if config.command else None,
        "args": config.command[1:],
    }


def job_object(job: Job) -> dict[str, Any]:
    """A job as seed 002 shows one."""
    record = job.public()
    command = job.config.command
    return {
        "jobId": job.job_id,
        "status": STATUS_NAMES[job.status],
        "name": job.name,
        "startTime": record["start_time"],
        "lastStatusUpdateTime": record["end_time"] or record["start_time"] or record["created_at"],
        "endTime": record["end_time"],
        "clusterId": job.allocation[0].cluster_id if job.allocation else None,
        "workingDirectory": job.config.working_dir,
        "reservedSlots": job.config.resources.vcpus,
        "scriptFile": command[0],
        "args": command[1:],
        "resourceUsage": record["resource_usage"],
    }


def _name(given: str | None, working_dir: str) -> str:
    """The job's name: the given one, else the working directory's last part (seed 002's),
    as a job name may be (letters, digits, ``._-``)."""
    raw = given or PurePosixPath(working_dir).name
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in raw)
    return cleaned.strip("-")[:100] or "job"


@api.get(f"{PREFIX}/jobs/", scope=Scope.READ, response=list[dict[str, Any]])
async def hpc_jobs(request: web.Request) -> web.Response:
    """Every job the key may see, as seed 002's Job documents."""
    return json_response([job_object(j) for j in visible_jobs(request)])


@api.post(
    f"{PREFIX}/jobs/",
    scope=Scope.SUBMIT,
    body_doc=HpcJob,
    response=dict[str, Any],
    status=201,
    errors=(NotFound, Conflict),
)
async def hpc_submit(request: web.Request) -> web.Response:
    """Submit a job: {workingDirectory, reservedSlots, scriptFile, args, name} → 201 {"jobId"}."""
    asked = parse_model(HpcJob, await json_body(request))
    config = {
        "name": _name(asked.name, asked.workingDirectory),
        "command": [asked.scriptFile, *asked.args],
        "working_dir": asked.workingDirectory,
        "resources": {"vcpus": asked.reservedSlots},
    }
    owner = principal_of(request).actor.owner
    job = await job_service(request).submit({"config": config}, owner)
    return json_response({"jobId": job.job_id}, status=201)


@api.get(f"{PREFIX}/jobs/{{job_id}}", scope=Scope.READ, response=dict[str, Any], errors=(NotFound,))
async def hpc_job(request: web.Request) -> web.Response:
    """One job, as seed 002's Job document."""
    return json_response(job_object(visible_job(request)))


@api.delete(
    f"{PREFIX}/jobs/{{job_id}}",
    scope=Scope.SUBMIT,
    response=dict[str, Any],
    status=202,
    errors=(NotFound, Forbidden),
)
async def hpc_stop(request: web.Request) -> web.Response:
    """Stop a job, as qdel (202 {"detail": "jobId: <id>"}); its record stays, STOPPED."""
    job = changeable_job(request)
    await job_service(request).cancel(job.job_id)
    return json_response({"detail": f"jobId: {job.job_id}"}, status=202)


@api.get(
    f"{PREFIX}/programs/", scope=Scope.READ, query=ProgramsQuery, response=list[dict[str, Any]]
)
async def hpc_programs(request: web.Request) -> web.Response:
    """The registered applications as seed 002's Programs (?name=, ?version=)."""
    query = query_of(request, ProgramsQuery)
    return json_response(
        [
            program_object(app)
            for app in job_service(request).applications.all()
            if query.name in (None, app.config.name) and query.version in (None, app.config.version)
        ]
    )
