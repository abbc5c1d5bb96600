"""REST routes of queues and jobs (CONTRACTS §6, seeds 000, 001, 002, 003).

Scopes: reading needs ``read``; submitting, cancelling, re-prioritising and deleting a job
need ``submit`` (and a non-admin key acts on its own jobs only); queues and pool limits need
``admin``.
"""

from __future__ import annotations

from aiohttp import web

from apportion.errors import InvalidRequest, NotFound
from apportion.jobs.records import Job
from apportion.jobs.service import JobService
from apportion.server.auth import Principal, Scope
from apportion.server.http_common import ctx, int_query, json_body, json_response, principal

routes = web.RouteTableDef()


def _jobs(request: web.Request) -> JobService:
    service = ctx(request).jobs
    assert service is not None
    return service


def _own(job: Job, who: Principal) -> Job:
    if who.scope is not Scope.ADMIN and job.owner not in (None, who.key_id):
        raise NotFound(f"no job {job.job_id!r} of this key", details={"job_id": job.job_id})
    return job


@routes.post("/jobs/submit")
async def submit_job(request: web.Request) -> web.Response:
    """Submit a job: {"config": {...}, "priority": 0} → {"job_id", "status": "queued"}."""
    who = principal(request, Scope.SUBMIT)
    job = await _jobs(request).submit(await json_body(request), who.key_id)
    return json_response(
        {"job_id": job.job_id, "status": job.status.value, "queue_position": job.queue_position},
        status=201,
    )


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs, oldest first; ?status=&queue=&limit=&offset=."""
    who = principal(request, Scope.READ)
    limit = int_query(request, "limit", 100, 1, 10_000)
    offset = int_query(request, "offset", 0, 0, 10**9)
    status = request.query.get("status")
    if status is not None and status not in {
        "queued",
        "scheduled",
        "running",
        "completed",
        "failed",
        "cancelled",
    }:
        raise InvalidRequest(
            f"status {status!r} is not a job state; use queued, scheduled, running, completed, failed or cancelled",
            path="status",
        )
    jobs = _jobs(request).select(
        status=status, queue=request.query.get("queue"), limit=10**9, offset=0
    )
    if who.scope is not Scope.ADMIN:
        jobs = [j for j in jobs if j.owner in (None, who.key_id)]
    return json_response([j.public() for j in jobs[offset : offset + limit]])


@routes.get("/jobs/{job_id}")
async def read_job(request: web.Request) -> web.Response:
    """One job record, with reason, queue position, allocation and resource usage."""
    who = principal(request, Scope.READ)
    return json_response(_own(_jobs(request).jobs.get(request.match_info["job_id"]), who).public())


@routes.get("/jobs/{job_id}/statuses")
async def job_statuses(request: web.Request) -> web.Response:
    """The job's status history [{status, time, reason}] (seed 003)."""
    who = principal(request, Scope.READ)
    service = _jobs(request)
    _own(service.jobs.get(request.match_info["job_id"]), who)
    return json_response(await service.jobs.history(request.match_info["job_id"]))


@routes.get("/jobs/{job_id}/logs")
async def job_logs(request: web.Request) -> web.Response:
    """The job's output; supports HTTP Range (bytes=N-)."""
    who = principal(request, Scope.READ)
    service = _jobs(request)
    job = _own(service.jobs.get(request.match_info["job_id"]), who)
    offset = 0
    range_header = request.headers.get("Range")
    if range_header:
        if not range_header.startswith("bytes=") or not range_header[6:].split("-")[0].isdigit():
            raise InvalidRequest("Range must be 'bytes=<start>-'", path="Range")
        offset = int(range_header[6:].split("-")[0])
    if job.scheduler_job_id is None:
        return web.Response(text="", headers={"X-Log-Complete": str(job.status.finished).lower()})
    driver = service.driver
    chunk = await driver.adapter_for(job).logs(
        driver.spec(job), job.scheduler_job_id, offset=offset, limit=1 << 20
    )
    headers = {"X-Log-Offset": str(chunk.offset), "X-Log-Complete": str(chunk.complete).lower()}
    return web.Response(text=chunk.text, status=206 if range_header else 200, headers=headers)


@routes.post("/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job (queued: at once; running: SIGTERM/scancel)."""
    who = principal(request, Scope.SUBMIT)
    service = _jobs(request)
    _own(service.jobs.get(request.match_info["job_id"]), who)
    await service.cancel(request.match_info["job_id"])
    return json_response({"success": True})


@routes.post("/jobs/{job_id}/priority")
async def set_priority(request: web.Request) -> web.Response:
    """Change a queued job's priority (409 once it has left the queue)."""
    who = principal(request, Scope.SUBMIT)
    service = _jobs(request)
    _own(service.jobs.get(request.match_info["job_id"]), who)
    await service.set_priority(request.match_info["job_id"], await json_body(request))
    return json_response({"success": True})


@routes.delete("/jobs/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    """Delete a job, cancelling it first if it runs (202)."""
    who = principal(request, Scope.SUBMIT)
    service = _jobs(request)
    _own(service.jobs.get(request.match_info["job_id"]), who)
    await service.delete(request.match_info["job_id"])
    return json_response({"success": True}, status=202)


@routes.get("/queue")
async def queue_statistics(request: web.Request) -> web.Response:
    """Queue statistics (seed 001): total_queued, running_jobs, per queue and per priority."""
    principal(request, Scope.READ)
    return json_response(_jobs(request).statistics())


@routes.put("/pool/limits")
async def pool_limits(request: web.Request) -> web.Response:
    """Set {"max_concurrent_jobs": 1..100}; emits limits_updated."""
    principal(request, Scope.ADMIN)
    limits = await _jobs(request).set_limits(await json_body(request))
    return json_response({"success": True, "limits": limits})


@routes.get("/queues")
async def list_queues(request: web.Request) -> web.Response:
    """Every queue."""
    principal(request, Scope.READ)
    service = _jobs(request)
    return json_response([service.queues.public(name) for name in service.queues.names()])


@routes.post("/queues")
async def create_queue(request: web.Request) -> web.Response:
    """Create a queue (seed 000's fields, plus policy_rule_uri and clusters)."""
    principal(request, Scope.ADMIN)
    return json_response(await _jobs(request).queues.create(await json_body(request)), status=201)


@routes.put("/queues")
async def update_queue(request: web.Request) -> web.Response:
    """Replace a queue, found by name."""
    principal(request, Scope.ADMIN)
    service = _jobs(request)
    queue = await service.queues.update(await json_body(request))
    service.wake()
    return json_response(queue)


@routes.get("/queues/{queue_id}")
async def read_queue(request: web.Request) -> web.Response:
    """One queue, by id or name."""
    principal(request, Scope.READ)
    service = _jobs(request)
    _, config = service.queues.by_id_or_name(request.match_info["queue_id"])
    return json_response(service.queues.public(config.name))


@routes.delete("/queues/{queue_id}")
async def delete_queue(request: web.Request) -> web.Response:
    """Delete a queue with no waiting or running jobs."""
    principal(request, Scope.ADMIN)
    service = _jobs(request)
    _, config = service.queues.by_id_or_name(request.match_info["queue_id"])
    in_use = any(
        j.queue == config.name and not j.status.finished for j in service.jobs.jobs.values()
    )
    await service.queues.delete(request.match_info["queue_id"], in_use=in_use)
    return json_response({"success": True})


@routes.get("/scheduler/partitions")
async def partitions(request: web.Request) -> web.Response:
    """Partitions of every scheduler adapter (Slurm's included)."""
    principal(request, Scope.READ)
    out = []
    for name, adapter in sorted(_jobs(request).driver.adapters.items()):
        try:
            for partition in await adapter.partitions():
                out.append({"adapter": name, **partition})
        except Exception as exc:  # an adapter that cannot answer is shown, not fatal
            out.append({"adapter": name, "error": str(exc)})
    return json_response(out)
