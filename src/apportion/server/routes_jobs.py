"""REST routes of queues and jobs (CONTRACTS §6, seeds 000, 001, 002, 003).

Scopes: reading needs ``read``; submitting, cancelling, re-prioritising and deleting a job
need ``submit``; queues and pool limits need ``admin``. A key sees its own account's jobs (an
operator or admin key: every account's) and changes those its own user submitted (an admin
key: every job); :mod:`apportion.ownership` is the rule. A job the key may not see answers as
an unknown id.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from apportion.adapters.base import AdapterError, LogChunk
from apportion.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RangeNotSatisfiable,
    UnknownPolicy,
)
from apportion.jobs.arrays import parse_array
from apportion.jobs.models import JobStatus, PriorityRequest, QueueConfig, SubmitRequest
from apportion.jobs.records import Job
from apportion.jobs.service import JobService
from apportion.ownership import Actor
from apportion.server.auth import Scope, principal_of
from apportion.server.http_common import (
    ctx,
    json_body,
    json_response,
    paged_response,
    parse_byte_range,
)
from apportion.server.routing import ApiRoutes, body_of, query_of, raw_body_of
from apportion.server.schemas import (
    AccountShareLine,
    Ack,
    ArrayRecord,
    CleanAnswer,
    JobPlanAnswer,
    JobRecord,
    JobsQuery,
    LimitsAnswer,
    LogsQuery,
    PoolLimits,
    PriorityLine,
    QueueRecord,
    StatusEntry,
    SubmitAnswer,
)

api = ApiRoutes("jobs", on_leader=True)


def job_service(request: web.Request) -> JobService:
    """The server's job service (every route of jobs, native or a seed's)."""
    service = ctx(request).jobs
    assert service is not None
    return service


def visible_job(request: web.Request) -> Job:
    """The job the path names — its id, or a prefix of it only one visible job has — if the
    calling key may see it; a job of another account is :class:`NotFound` exactly as an
    unknown id (and never matches a prefix), so its existence does not leak."""
    who = principal_of(request).actor
    return job_service(request).jobs.resolve(
        request.match_info["job_id"], visible=lambda job: who.may_see(job.owner)
    )


def visible_jobs(request: web.Request) -> list[Job]:
    """Every job the calling key may see, in submission order (the seed surfaces' listings)."""
    who = principal_of(request).actor
    jobs = job_service(request).jobs.jobs.values()
    return sorted((job for job in jobs if who.may_see(job.owner)), key=lambda job: job.seq)


def changeable_job(request: web.Request) -> Job:
    """The job the path names, if the calling key may change it (:func:`_visible` first);
    :class:`Forbidden` for a job another user of the key's account submitted."""
    job = visible_job(request)
    who: Actor = principal_of(request).actor
    if not who.may_change(job.owner):
        raise Forbidden(
            f"job {job.job_id} was submitted by user {job.owner.user!r} of account "
            f"{job.owner.account!r}; only that user or an admin key may change it",
            details={"job_id": job.job_id, "user": job.owner.user},
        )
    return job


@api.post(
    "/jobs/submit",
    scope=Scope.SUBMIT,
    body=SubmitRequest,
    response=SubmitAnswer,
    status=201,
    errors=(NotFound, UnknownPolicy, Conflict),
)
async def submit_job(request: web.Request) -> web.Response:
    """Submit a job: {"config": {...}, "priority": 0} → {"job_id", "status": "queued"}."""
    who = principal_of(request).actor
    job = await job_service(request).submit(raw_body_of(request), who.owner)
    # what was accepted: an admission cycle may already have moved it on (or ended it: a
    # dependency that can never hold) while its record was being committed
    answer: dict[str, Any] = {
        "job_id": job.job_id,
        "status": JobStatus.QUEUED.value,
        "queue_position": job.queue_position,
    }
    if job.array_job_id is not None:
        answer["array_job_id"] = job.array_job_id
        answer["array_tasks"] = len(parse_array(job.config.array or "").indices)
    return json_response(answer, status=201)


@api.post(
    "/jobs/plan",
    scope=Scope.SUBMIT,
    body=SubmitRequest,
    response=JobPlanAnswer,
    errors=(NotFound, Conflict),
)
async def plan_job(request: web.Request) -> web.Response:
    """Dry-run a submit: where the job would start now, or why it would wait; nothing stored.

    As nomad job plan and sbatch --test-only: the body and the refusals of POST /jobs/submit."""
    who = principal_of(request).actor
    plan = await job_service(request).plan(raw_body_of(request), who.owner)
    return json_response(plan.public())


@api.get("/priority", scope=Scope.READ, response=list[PriorityLine])
async def job_priorities(request: web.Request) -> web.Response:
    """Waiting jobs in the order they are considered, with their priority factors (as sprio).

    ``position`` counts every waiting job, those the key may not see too; docs/scheduling.md."""
    who = principal_of(request).actor
    service = job_service(request)
    multifactor = service.multifactor()
    lines = []
    waiting = service.waiting(service.jobs.unfinished.values())
    for position, job in enumerate(waiting, start=1):
        if who.may_see(job.owner):
            line = {
                "job_id": job.job_id,
                "name": job.name,
                "account": job.owner.account,
                "user": job.owner.user,
                "queue": job.queue,
                "position": position,
            }
            lines.append(line | multifactor.factors(job).public())
    return json_response(lines)


@api.get("/share", scope=Scope.READ, response=list[AccountShareLine])
async def fair_share(request: web.Request) -> web.Response:
    """Each account's shares, decayed usage and fair-share factor, as sshare (docs/scheduling.md).

    A key sees its own account's line; an operator or admin key every account's."""
    who = principal_of(request).actor
    lines = job_service(request).fair_shares().values()
    return json_response([line.public() for line in lines if who.may_see_account(line.account)])


@api.get("/jobs", scope=Scope.READ, query=JobsQuery, response=list[JobRecord])
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs the key may see, oldest first; ?status=&queue=&label=k=v&parent_job_id= (paged)."""
    who = principal_of(request).actor
    query = query_of(request, JobsQuery)
    status = None if query.status is None else query.status.value
    labels: dict[str, str] = {}
    for given in query.label:
        key, equals, value = given.partition("=")
        if not equals or not key:
            raise InvalidRequest(
                f"query parameter 'label' is {given[:80]!r}; give key=value, e.g."
                " label=team=vision (repeat it: a job must have every one)",
                path="query.label",
            )
        labels[key] = value
    jobs = job_service(request).select(
        status=status,
        queue=query.queue,
        labels=labels,
        parent_job_id=query.parent_job_id,
        limit=10**9,
        offset=0,
    )
    visible = [j for j in jobs if who.may_see(j.owner)]
    return paged_response(request, visible, query.offset, query.limit, Job.public)


@api.post(
    "/jobs",
    scope=Scope.SUBMIT,
    body=SubmitRequest,
    response=JobRecord,
    status=201,
    errors=(NotFound, UnknownPolicy, Conflict),
)
async def create_job(request: web.Request) -> web.Response:
    """Create a job without queueing it (status created); POST /jobs/{id}/submit queues it."""
    owner = principal_of(request).actor.owner
    job = await job_service(request).create(raw_body_of(request), owner)
    return json_response(job.public(), status=201)


@api.patch(
    "/jobs/{job_id}",
    scope=Scope.SUBMIT,
    body=SubmitRequest,
    response=JobRecord,
    errors=(NotFound, Forbidden, Conflict),
)
async def revise_job(request: web.Request) -> web.Response:
    """Replace a created job's config and priority (409 once it was submitted)."""
    job = changeable_job(request)
    return json_response((await job_service(request).revise(job, raw_body_of(request))).public())


@api.post(
    "/jobs/{job_id}/submit",
    scope=Scope.SUBMIT,
    response=JobRecord,
    errors=(NotFound, Forbidden, Conflict),
)
async def submit_created_job(request: web.Request) -> web.Response:
    """Queue a created job (409 for a job in any other status)."""
    job = changeable_job(request)
    return json_response((await job_service(request).submit_created(job)).public())


@api.get("/jobs/{job_id}", scope=Scope.READ, response=JobRecord, errors=(NotFound,))
async def read_job(request: web.Request) -> web.Response:
    """One job record, with reason, queue position, allocation and resource usage."""
    return json_response(visible_job(request).public())


@api.get(
    "/jobs/{job_id}/statuses", scope=Scope.READ, response=list[StatusEntry], errors=(NotFound,)
)
async def job_statuses(request: web.Request) -> web.Response:
    """The job's status history [{status, time, reason}] (seed 003)."""
    job = visible_job(request)
    return json_response(await job_service(request).jobs.history(job.job_id))


@api.get(
    "/jobs/{job_id}/logs",
    scope=Scope.READ,
    query=LogsQuery,
    response_media="text/plain",
    success={200: "the output from the start", 206: "the bytes the Range asked for"},
    errors=(NotFound, RangeNotSatisfiable),
)
async def job_logs(request: web.Request) -> web.Response:
    """The job's output (?worker=N: that worker's own); supports HTTP Range, one range or a suffix."""
    service = job_service(request)
    job = visible_job(request)
    worker = query_of(request, LogsQuery).worker
    asked = parse_byte_range(request.headers.get("Range"))
    if job.scheduler_job_id is None:
        return web.Response(text="", headers={"X-Log-Complete": str(job.status.finished).lower()})
    driver = service.driver
    adapter, spec = driver.adapter_for(job), driver.spec(job)

    async def read(offset: int, limit: int) -> LogChunk:
        try:
            return await adapter.logs(
                spec, job.scheduler_job_id or "", offset=offset, limit=limit, worker=worker
            )
        except AdapterError as exc:
            if worker is None:
                raise
            raise InvalidRequest(exc.message, path="query.worker") from None

    if asked is None:
        chunk = await read(0, LOG_CHUNK_BYTES)
        return web.Response(text=chunk.text, headers=_log_headers(chunk))
    start = asked.start
    if start is None:  # a suffix: the last bytes of the stream as it is now
        start = max(0, (await read(0, 1)).size - (asked.suffix or 0))
    limit = LOG_CHUNK_BYTES if asked.end is None else min(asked.end - start + 1, LOG_CHUNK_BYTES)
    chunk = await read(start, limit)
    if start > chunk.size:
        raise RangeNotSatisfiable(
            f"the output has {chunk.size} bytes so far; ask for a range that starts within it",
            details={"size": chunk.size},
        )
    headers = _log_headers(chunk)
    if chunk.offset > start:  # at the stream's current end there is nothing to give yet
        total = str(chunk.size) if job.status.finished else "*"  # it may still grow
        headers["Content-Range"] = f"bytes {start}-{chunk.offset - 1}/{total}"
    return web.Response(text=chunk.text, status=206, headers=headers)


LOG_CHUNK_BYTES = 1 << 20  # the most one GET /jobs/{id}/logs answers


def _log_headers(chunk: LogChunk) -> dict[str, str]:
    """Where to read on from, and whether that is the end (a client following the output
    asks again from ``X-Log-Offset`` until ``X-Log-Complete`` is true)."""
    return {
        "Accept-Ranges": "bytes",
        "X-Log-Offset": str(chunk.offset),
        "X-Log-Complete": str(chunk.complete).lower(),
    }


@api.post("/jobs/{job_id}/cancel", scope=Scope.SUBMIT, response=Ack, errors=(NotFound, Forbidden))
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job (queued: at once; running: SIGTERM/scancel)."""
    job = changeable_job(request)
    await job_service(request).cancel(job.job_id)
    return json_response({"success": True})


@api.post(
    "/jobs/{job_id}/clean",
    scope=Scope.SUBMIT,
    response=CleanAnswer,
    errors=(NotFound, Forbidden, Conflict),
)
async def clean_job(request: web.Request) -> web.Response:
    """Remove an ended job's own working directory (409 while it runs); logs and outputs stay."""
    job = changeable_job(request)
    words = await job_service(request).clean(job.job_id)
    return json_response({"success": True, "message": words, "cleaned": job.cleaned})


@api.post(
    "/jobs/{job_id}/priority",
    scope=Scope.SUBMIT,
    body=PriorityRequest,
    response=Ack,
    errors=(NotFound, Forbidden, Conflict),
)
async def set_priority(request: web.Request) -> web.Response:
    """Change a queued job's priority (409 once it has left the queue)."""
    job = changeable_job(request)
    await job_service(request).set_priority(job.job_id, raw_body_of(request))
    return json_response({"success": True})


@api.delete(
    "/jobs/{job_id}",
    scope=Scope.SUBMIT,
    response=Ack,
    status=202,
    errors=(NotFound, Forbidden),
)
async def delete_job(request: web.Request) -> web.Response:
    """Delete a job, cancelling it first if it runs (202; deleted false: when it has stopped)."""
    job = changeable_job(request)
    deleted = await job_service(request).delete(job.job_id)
    answer: dict[str, Any] = {"success": True, "deleted": deleted}
    if not deleted:
        answer["message"] = (
            f"job {job.job_id} is still stopping; its record is deleted when it has ended"
        )
    return json_response(answer, status=202)


def visible_tasks(request: web.Request) -> list[Job]:
    """The tasks of the array the path names that the calling key may see, by index;
    :class:`NotFound` when there are none (another account's array answers as an unknown id)."""
    array_job_id = request.match_info["array_job_id"]
    tasks = [job for job in visible_jobs(request) if job.array_job_id == array_job_id]
    if not tasks:
        raise NotFound(
            f"no array {array_job_id!r}; an array's id is the array_job_id its submit answered",
            details={"array_job_id": array_job_id},
        )
    return sorted(tasks, key=lambda job: job.array_task_id or 0)


@api.get("/arrays/{array_job_id}", scope=Scope.READ, response=ArrayRecord, errors=(NotFound,))
async def read_array(request: web.Request) -> web.Response:
    """An array as one job: its tasks' states counted, and each task's status and exit code."""
    tasks = visible_tasks(request)
    first = tasks[0]
    spec = first.config.array or ""
    return json_response(
        {
            "array_job_id": first.array_job_id,
            "name": first.name,
            "queue": first.queue,
            "array": spec,
            "limit": parse_array(spec).limit,
            "tasks_total": len(tasks),
            "states": dict(Counter(task.status.value for task in tasks)),
            "tasks": [
                {
                    "task_id": task.array_task_id,
                    "job_id": task.job_id,
                    "status": task.status.value,
                    "return_code": task.return_code,
                    "exit_codes": None if task.exit_codes is None else list(task.exit_codes),
                }
                for task in tasks
            ],
        }
    )


@api.post(
    "/arrays/{array_job_id}/cancel",
    scope=Scope.SUBMIT,
    response=Ack,
    errors=(NotFound, Forbidden),
)
async def cancel_array(request: web.Request) -> web.Response:
    """Cancel every task of an array that has not ended (as scancel of an array job)."""
    who = principal_of(request).actor
    tasks = visible_tasks(request)
    if not all(who.may_change(task.owner) for task in tasks):
        raise Forbidden(
            f"array {tasks[0].array_job_id} was submitted by user {tasks[0].owner.user!r};"
            " only that user or an admin key may cancel it",
            details={"array_job_id": tasks[0].array_job_id},
        )
    service = job_service(request)
    for task in tasks:
        if not task.status.finished:
            await service.cancel(task.job_id)
    return json_response({"success": True})


@api.get("/queue", scope=Scope.READ, response=dict[str, Any])
async def queue_statistics(request: web.Request) -> web.Response:
    """Queue statistics (seed 001): total_queued, running_jobs, per queue and per priority."""
    return json_response(job_service(request).statistics())


@api.put("/pool/limits", scope=Scope.ADMIN, body_doc=PoolLimits, response=LimitsAnswer)
async def pool_limits(request: web.Request) -> web.Response:
    """Set {"max_concurrent_jobs": 1..100, or null for unlimited}; emits limits_updated."""
    limits = await job_service(request).set_limits(await json_body(request))
    return json_response({"success": True, "limits": limits})


@api.get("/queues", scope=Scope.READ, response=list[QueueRecord])
async def list_queues(request: web.Request) -> web.Response:
    """Every queue, with its use of its quotas (quota_used)."""
    service = job_service(request)
    used = service.quota_used()
    return json_response(
        [
            service.queues.public(name) | {"quota_used": used.get(name)}
            for name in service.queues.names()
        ]
    )


@api.post(
    "/queues",
    scope=Scope.ADMIN,
    body=QueueConfig,
    response=QueueRecord,
    status=201,
    errors=(Conflict,),
)
async def create_queue(request: web.Request) -> web.Response:
    """Create a queue (seed 000's fields, plus policy_rule_uri and clusters)."""
    _check_plugin(request)
    return json_response(await job_service(request).queues.create(raw_body_of(request)), status=201)


def _check_plugin(request: web.Request) -> None:
    """:class:`InvalidRequest` naming ``plugin`` for an adapter this server does not run."""
    plugin = body_of(request, QueueConfig).plugin
    adapters = job_service(request).driver.adapters
    if plugin is not None and plugin not in adapters:
        raise InvalidRequest(
            f"plugin {plugin!r} is no scheduler adapter of this server; it runs"
            f" {', '.join(sorted(adapters))} (GET /plugins lists every plugin and why one is"
            " not available)",
            path="body.plugin",
        )


@api.put("/queues", scope=Scope.ADMIN, body=QueueConfig, response=QueueRecord, errors=(NotFound,))
async def update_queue(request: web.Request) -> web.Response:
    """Replace a queue, found by name."""
    _check_plugin(request)
    service = job_service(request)
    queue = await service.queues.update(raw_body_of(request))
    service.wake()
    return json_response(queue)


@api.get("/queues/{queue_id}", scope=Scope.READ, response=QueueRecord, errors=(NotFound,))
async def read_queue(request: web.Request) -> web.Response:
    """One queue, by id or name, with its use of its quotas (quota_used)."""
    service = job_service(request)
    _, config = service.queues.by_id_or_name(request.match_info["queue_id"])
    used = service.quota_used().get(config.name)
    return json_response(service.queues.public(config.name) | {"quota_used": used})


@api.delete("/queues/{queue_id}", scope=Scope.ADMIN, response=Ack, errors=(NotFound, Conflict))
async def delete_queue(request: web.Request) -> web.Response:
    """Delete a queue with no waiting or running jobs."""
    service = job_service(request)
    _, config = service.queues.by_id_or_name(request.match_info["queue_id"])
    in_use = any(
        j.queue == config.name and not j.status.finished for j in service.jobs.jobs.values()
    )
    await service.queues.delete(request.match_info["queue_id"], in_use=in_use)
    await service.applications.forget_queue(config.name)
    return json_response({"success": True})


@api.get("/plugins", scope=Scope.READ, response=list[dict[str, Any]])
async def list_plugins(request: web.Request) -> web.Response:
    """The scheduler adapter plugins: name, module_name, class_name, builtin, available, error."""
    return json_response([p.public() for p in ctx(request).plugins])


@api.get("/scheduler/partitions", scope=Scope.READ, response=list[dict[str, Any]])
async def partitions(request: web.Request) -> web.Response:
    """Partitions of every scheduler adapter (Slurm's included)."""
    out = []
    for name, adapter in sorted(job_service(request).driver.adapters.items()):
        try:
            for partition in await adapter.partitions():
                out.append({"adapter": name, **partition})
        except Exception as exc:  # an adapter that cannot answer is shown, not fatal
            out.append({"adapter": name, "error": str(exc)})
    return json_response(out)
