"""Seed 003's API (Rescale's ``/api/v2/``) over Apportion's own files and jobs (docs/seeds.md).

A thin translation, not a second job system: every route calls what the native routes call
(:class:`~apportion.files.FileBook`, :class:`~apportion.jobs.service.JobService`) and only
renames. Rescale's clients send ``Authorization: Token <key>`` (accepted everywhere), page
listings as ``{count, next, results}`` (``page``, ``page_size``), and name fields in camelCase.

A job is created from ``{name, jobanalyses: [{analysis, command, hardware, inputFiles,
envVars}]}`` — one analysis; ``command`` is a shell command, run as ``/bin/sh -c`` *as the
job's user*; ``hardware.slots`` workers of ``coresPerSlot`` vCPUs (and ``gpusPerSlot`` GPUs,
an Apportion addition: Rescale's core types name GPUs, Apportion counts them), ``walltime`` in
hours — and every file the job leaves in its working directory is kept as an output (Rescale
keeps them all). Status names are Rescale's: created ``Pending``, queued ``Queued``, scheduled
``Started``, running ``Executing``, and every end ``Completed`` (the reason says how it ended).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from apportion.errors import Conflict, Forbidden, InvalidRequest, MessageTooLarge, NotFound
from apportion.files import FileRecord, FileType
from apportion.jobs.models import JobStatus, parse_model
from apportion.jobs.records import Job
from apportion.server.auth import Scope, principal_of
from apportion.server.http_common import json_body, json_response
from apportion.server.routes_files import (
    file_book,
    file_content,
    read_lines,
    receive_upload,
    visible_file,
)
from apportion.server.routes_jobs import changeable_job, job_service, visible_job, visible_jobs
from apportion.server.routing import ApiRoutes, query_of
from apportion.timefmt import iso_utc

api = ApiRoutes("seed 003 (Rescale)", on_leader=True)

PREFIX = "/api/v2"

TYPE_IDS = {
    FileType.INPUT: 1,
    FileType.TEMPLATE: 2,
    FileType.PARAMETER: 3,
    FileType.SCRIPT: 4,
    FileType.OUTPUT: 5,
    FileType.CASE: 8,
    FileType.TEMPORARY: 10,
}
"""Rescale's ``typeId`` of each file type."""

STATUS_NAMES = {
    JobStatus.CREATED: "Pending",
    JobStatus.QUEUED: "Queued",
    JobStatus.SCHEDULED: "Started",
    JobStatus.RUNNING: "Executing",
    JobStatus.COMPLETED: "Completed",
    JobStatus.FAILED: "Completed",
    JobStatus.CANCELLED: "Completed",
}
"""Rescale's name of each job status (an end is ``Completed``; its reason says which)."""

CLUSTER_STATUS_NAMES = {
    JobStatus.CREATED: "Not Started",
    JobStatus.QUEUED: "Queued",
    JobStatus.SCHEDULED: "Starting",
    JobStatus.RUNNING: "Started",
    JobStatus.COMPLETED: "Stopped",
    JobStatus.FAILED: "Stopped",
    JobStatus.CANCELLED: "Stopped",
}
"""Rescale's cluster status at each job status: a job's "cluster" is what it holds, the nodes
and GPUs it was placed on, from its placement to its end."""


# ---------------------------------------------------------------- bodies and queries
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Analysis(_Strict):
    code: StrictStr = Field("user_included", max_length=100)
    version: StrictStr = Field("0", max_length=100)


class Hardware(_Strict):
    coreType: StrictStr | None = Field(None, max_length=100)
    coresPerSlot: StrictInt = Field(1, ge=1, le=4096)
    slots: StrictInt = Field(1, ge=1, le=4096)
    gpusPerSlot: StrictInt = Field(0, ge=0, le=1024)
    walltime: float | None = Field(None, gt=0, le=720)  # hours


class InputFileRef(_Strict):
    id: StrictStr
    decompress: StrictBool = False


class JobAnalysis(_Strict):
    analysis: Analysis = Field(default_factory=Analysis)
    command: StrictStr = Field(min_length=1, max_length=100_000)
    hardware: Hardware = Field(default_factory=Hardware)
    inputFiles: list[InputFileRef] = Field(default_factory=list, max_length=100)
    envVars: dict[str, str] = Field(default_factory=dict)


class JobDefinition(_Strict):
    """``POST /api/v2/jobs/``'s body."""

    name: StrictStr = Field("job", max_length=200)
    description: StrictStr | None = Field(None, max_length=10_000)
    isLowPriority: StrictBool = False
    projectId: StrictStr | None = Field(None, max_length=100)
    jobanalyses: list[JobAnalysis] = Field(min_length=1, max_length=1)


class Page(BaseModel):
    """A listing's page (query strings: not strict, unknown names refused)."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(1, ge=1, le=10**9)
    page_size: int = Field(100, ge=1, le=1000)


class FilesPage(Page):
    search: str | None = Field(None, max_length=255)


# ---------------------------------------------------------------- translations
def file_object(record: FileRecord) -> dict[str, Any]:
    """A stored file as Rescale shows one."""
    return {
        "id": record.file_id,
        "name": record.name,
        "decryptedSize": record.size,
        "fileChecksums": [{"hashFunction": "sha512", "fileHash": record.sha512}],
        "typeId": TYPE_IDS[record.type],
        "dateUploaded": iso_utc(record.created_at),
        "isUploaded": True,
        "owner": record.owner.user,
    }


def job_object(job: Job) -> dict[str, Any]:
    """A job as Rescale shows one: its definition rebuilt from the job's own config."""
    config = job.config
    resources = config.resources
    command = (
        config.command[2] if config.command[:2] == ["/bin/sh", "-c"] else " ".join(config.command)
    )
    analysis = config.labels.get("rescale.analysis", "user_included:0").split(":", 1)
    return {
        "id": job.job_id,
        "name": job.name,
        "owner": job.owner.user,
        "dateInserted": iso_utc(job.created_at),
        "jobStatus": {"content": STATUS_NAMES[job.status], "statusReason": job.failed_reason},
        "jobanalyses": [
            {
                "analysis": {"code": analysis[0], "version": analysis[-1]},
                "command": command,
                "hardware": {
                    "coreType": config.labels.get("rescale.coreType"),
                    "coresPerSlot": resources.vcpus or 1,
                    "slots": config.replica_count,
                    "gpusPerSlot": resources.gpus,
                    "walltime": None if config.walltime is None else config.walltime / 3600,
                },
                "inputFiles": [f.model_dump() for f in config.input_files],
                "envVars": dict(config.env),
            }
        ],
    }


def native_submit_body(definition: JobDefinition) -> dict[str, Any]:
    """The native ``POST /jobs/submit`` body of a Rescale job definition."""
    (analysis,) = definition.jobanalyses
    hardware = analysis.hardware
    labels = {"rescale.analysis": f"{analysis.analysis.code}:{analysis.analysis.version}"}
    if hardware.coreType is not None:
        labels["rescale.coreType"] = hardware.coreType
    config: dict[str, Any] = {
        "name": _job_name(definition.name),
        "command": ["/bin/sh", "-c", analysis.command],
        "env": analysis.envVars,
        "resources": {"vcpus": hardware.coresPerSlot, "gpus": hardware.gpusPerSlot},
        "replica_count": hardware.slots,
        "labels": labels,
        "input_files": [f.model_dump() for f in analysis.inputFiles],
        "output_files": ["**/*"],  # Rescale keeps every file a job leaves
        "keep_log": True,  # and its output, as process_output.log
    }
    if hardware.walltime is not None:
        config["walltime"] = hardware.walltime * 3600
    return {"config": config}


def _job_name(name: str) -> str:
    """A Rescale job name (free text) as a job name may be (letters, digits, ``._-``)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in name)
    return cleaned.strip("-")[:100] or "job"


def paged(request: web.Request, items: list[dict[str, Any]], query: Page) -> web.Response:
    """``{count, next, results}``: the page of ``items``, and the next page's URL or null."""
    start = (query.page - 1) * query.page_size
    page = items[start : start + query.page_size]
    following = None
    if start + len(page) < len(items):
        following = str(request.url.update_query(page=query.page + 1))
    return json_response({"count": len(items), "next": following, "results": page})


# ---------------------------------------------------------------- files
@api.post(
    f"{PREFIX}/files/contents/",
    scope=Scope.SUBMIT,
    body_media="multipart/form-data",
    response=dict[str, Any],
    status=201,
    errors=(MessageTooLarge,),
)
async def rescale_upload(request: web.Request) -> web.Response:
    """Upload a file (multipart part ``file``); the Rescale file object, with its sha512."""
    return json_response(file_object(await receive_upload(request, FileType.INPUT)), status=201)


@api.get(f"{PREFIX}/files/", scope=Scope.READ, query=FilesPage, response=dict[str, Any])
async def rescale_files(request: web.Request) -> web.Response:
    """The key's files, paged as {count, next, results} (?search= a part of the name)."""
    query = query_of(request, FilesPage)
    found = file_book(request).visible(principal_of(request).actor.may_see)
    if query.search:
        found = [f for f in found if query.search in f.name]
    return paged(request, [file_object(f) for f in found], query)


@api.get(
    f"{PREFIX}/files/{{file_id}}/", scope=Scope.READ, response=dict[str, Any], errors=(NotFound,)
)
async def rescale_file(request: web.Request) -> web.Response:
    """One file object: name, decryptedSize, fileChecksums (sha512), typeId, dateUploaded."""
    return json_response(file_object(visible_file(request)))


@api.get(
    f"{PREFIX}/files/{{file_id}}/contents/",
    scope=Scope.READ,
    response_media="application/octet-stream",
    success={200: "the whole content", 206: "the range asked for"},
    errors=(NotFound,),
)
async def rescale_file_contents(request: web.Request) -> web.StreamResponse:
    """The file's content, with HTTP ranges."""
    return file_content(request, visible_file(request))


@api.get(
    f"{PREFIX}/files/{{file_id}}/lines/",
    scope=Scope.READ,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rescale_file_lines(request: web.Request) -> web.Response:
    """{"lines": [...]}: the file's first 10,000 lines, each with its line end."""
    path = file_book(request).content(visible_file(request))
    lines, _ = await read_lines(path, 0, 10_000)
    return json_response({"lines": [f"{line}\n" for line in lines]})


# ---------------------------------------------------------------- jobs
@api.post(
    f"{PREFIX}/jobs/",
    scope=Scope.SUBMIT,
    body_doc=JobDefinition,
    response=dict[str, Any],
    status=201,
    errors=(NotFound, Conflict),
)
async def rescale_create_job(request: web.Request) -> web.Response:
    """Create (not submit) a job from a Rescale job definition; the job object, with its id."""
    definition = parse_model(JobDefinition, await json_body(request))
    owner = principal_of(request).actor.owner
    job = await job_service(request).create(native_submit_body(definition), owner)
    return json_response(job_object(job), status=201)


@api.patch(
    f"{PREFIX}/jobs/{{job_id}}/",
    scope=Scope.SUBMIT,
    body_doc=JobDefinition,
    response=dict[str, Any],
    errors=(NotFound, Forbidden, Conflict),
)
async def rescale_update_job(request: web.Request) -> web.Response:
    """Replace a saved (not yet submitted) job's definition; 409 once it was submitted."""
    job = changeable_job(request)
    definition = parse_model(JobDefinition, await json_body(request))
    revised = await job_service(request).revise(job, native_submit_body(definition))
    return json_response(job_object(revised))


@api.get(f"{PREFIX}/jobs/", scope=Scope.READ, query=Page, response=dict[str, Any])
async def rescale_jobs(request: web.Request) -> web.Response:
    """The key's jobs, paged as {count, next, results}."""
    jobs = [job_object(j) for j in visible_jobs(request)]
    return paged(request, jobs, query_of(request, Page))


@api.get(
    f"{PREFIX}/jobs/{{job_id}}/", scope=Scope.READ, response=dict[str, Any], errors=(NotFound,)
)
async def rescale_job(request: web.Request) -> web.Response:
    """One job object."""
    return json_response(job_object(visible_job(request)))


@api.post(
    f"{PREFIX}/jobs/{{job_id}}/submit/",
    scope=Scope.SUBMIT,
    response=dict[str, Any],
    errors=(NotFound, Forbidden, Conflict),
)
async def rescale_submit_job(request: web.Request) -> web.Response:
    """Submit a created job (200)."""
    job = await job_service(request).submit_created(changeable_job(request))
    return json_response(job_object(job))


@api.get(
    f"{PREFIX}/jobs/{{job_id}}/statuses/",
    scope=Scope.READ,
    query=Page,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rescale_job_statuses(request: web.Request) -> web.Response:
    """The job's status history, paged: [{status, statusDate, statusReason}], oldest first."""
    job = visible_job(request)
    history = await job_service(request).jobs.history(job.job_id)
    entries = [
        {
            "status": STATUS_NAMES[JobStatus(e["status"])],
            "statusDate": e["time"],
            "statusReason": e["reason"],
        }
        for e in history
    ]
    return paged(request, entries, query_of(request, Page))


@api.get(
    f"{PREFIX}/jobs/{{job_id}}/cluster_statuses/",
    scope=Scope.READ,
    query=Page,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rescale_cluster_statuses(request: web.Request) -> web.Response:
    """The history of what the job holds, paged: [{status, statusDate, statusReason}]."""
    job = visible_job(request)
    history = await job_service(request).jobs.history(job.job_id)
    entries: list[dict[str, Any]] = []
    for e in history:
        status = CLUSTER_STATUS_NAMES[JobStatus(e["status"])]
        if not entries or entries[-1]["status"] != status:  # one entry per change
            entries.append({"status": status, "statusDate": e["time"], "statusReason": e["reason"]})
    return paged(request, entries, query_of(request, Page))


@api.get(
    f"{PREFIX}/jobs/{{job_id}}/instances/",
    scope=Scope.READ,
    response=list[dict[str, Any]],
    errors=(NotFound,),
)
async def rescale_instances(request: web.Request) -> web.Response:
    """The job's workers, as Rescale's instances: [{id, clusterId, role, publicIp, …}]."""
    job = visible_job(request)
    return json_response(
        [
            {
                "id": f"{job.job_id}-{index}",
                "clusterId": placement.cluster_id,
                "role": "MPI_MASTER" if index == 0 else "MPI_SLAVE",
                "publicIp": placement.node_id,  # the node's name: Apportion keeps no addresses
                "sshPort": None,  # no SSH into workers
                "username": None,
                "gpus": list(placement.gpus or ()),
            }
            for index, placement in enumerate(job.allocation or ())
        ]
    )


@api.get(
    f"{PREFIX}/jobs/{{job_id}}/files/",
    scope=Scope.READ,
    query=FilesPage,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rescale_job_files(request: web.Request) -> web.Response:
    """The job's output files, paged (?search= a part of the name)."""
    job = visible_job(request)
    query = query_of(request, FilesPage)
    found = [
        f
        for f in file_book(request).visible(principal_of(request).actor.may_see)
        if f.job_id == job.job_id and (not query.search or query.search in f.name)
    ]
    return paged(request, [file_object(f) for f in found], query)


@api.post(
    f"{PREFIX}/jobs/{{job_id}}/stop/",
    scope=Scope.SUBMIT,
    response=dict[str, Any],
    status=202,
    errors=(NotFound, Forbidden),
)
async def rescale_stop_job(request: web.Request) -> web.Response:
    """Stop a job (202): cancelled, as POST /jobs/{id}/cancel."""
    job = await job_service(request).cancel(changeable_job(request).job_id)
    return json_response(job_object(job), status=202)


@api.delete(
    f"{PREFIX}/jobs/{{job_id}}/",
    scope=Scope.SUBMIT,
    response=dict[str, Any],
    errors=(NotFound, Forbidden, InvalidRequest),
)
async def rescale_delete_job(request: web.Request) -> web.Response:
    """Delete a job that has ended (400 while it runs: stop it first, as Rescale says)."""
    job = changeable_job(request)
    if not job.status.finished and job.status is not JobStatus.CREATED:
        raise InvalidRequest(
            f"job {job.job_id} is {STATUS_NAMES[job.status]}; stop it first"
            f" (POST {PREFIX}/jobs/{job.job_id}/stop/)",
            path="job_id",
        )
    await job_service(request).delete(job.job_id)
    return json_response({"deleted": job.job_id})
