"""REST routes of applications and their runtime configurations per queue (seed 000's
``applications`` and ``app-runtime-config``; docs/jobs.md, "Applications").

Reading needs ``read``; registering, changing and deleting need ``admin``, as queues do. An
application is named in a path by its id, by ``name:version``, or by a name only one version
has.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apportion.errors import Conflict, NotFound
from apportion.jobs.applications import Application, ApplicationConfig, RuntimeConfig
from apportion.server.auth import Scope
from apportion.server.http_common import json_response
from apportion.server.routes_jobs import job_service
from apportion.server.routing import ApiRoutes, query_of, raw_body_of
from apportion.server.schemas import (
    Ack,
    ApplicationRecord,
    RuntimeConfigRecord,
    RuntimeConfigsQuery,
)

api = ApiRoutes("applications", on_leader=True)


@api.get("/applications", scope=Scope.READ, response=list[ApplicationRecord])
async def list_applications(request: web.Request) -> web.Response:
    """Every application, by number."""
    return json_response([app.public() for app in job_service(request).applications.all()])


@api.post(
    "/applications",
    scope=Scope.ADMIN,
    body=ApplicationConfig,
    response=ApplicationRecord,
    status=201,
    errors=(Conflict,),
)
async def create_application(request: web.Request) -> web.Response:
    """Register an application: {name, version, command, env, description, attributes}."""
    app = await job_service(request).applications.create(raw_body_of(request))
    return json_response(app.public(), status=201)


@api.put(
    "/applications",
    scope=Scope.ADMIN,
    body=ApplicationConfig,
    response=ApplicationRecord,
    errors=(NotFound,),
)
async def update_application(request: web.Request) -> web.Response:
    """Replace an application, found by its name and version."""
    app = await job_service(request).applications.update(raw_body_of(request))
    return json_response(app.public())


@api.get(
    "/applications/{application}",
    scope=Scope.READ,
    response=ApplicationRecord,
    errors=(NotFound,),
)
async def read_application(request: web.Request) -> web.Response:
    """One application, by id, name:version, or a name of one version."""
    app = job_service(request).applications.get(request.match_info["application"])
    return json_response(app.public())


@api.delete("/applications/{application}", scope=Scope.ADMIN, response=Ack, errors=(NotFound,))
async def delete_application(request: web.Request) -> web.Response:
    """Delete an application and its runtime configurations (accepted jobs keep theirs)."""
    await job_service(request).applications.delete(request.match_info["application"])
    return json_response({"success": True})


def _runtime_record(queue: str, app: Application, runtime: RuntimeConfig) -> dict[str, Any]:
    return {
        "queue": queue,
        "application_id": app.id,
        "application": app.config.reference,
        **runtime.model_dump(),
    }


@api.get(
    "/runtime-configs",
    scope=Scope.READ,
    query=RuntimeConfigsQuery,
    response=list[RuntimeConfigRecord],
    errors=(NotFound,),
)
async def list_runtime_configs(request: web.Request) -> web.Response:
    """Runtime configurations (?queue=, ?application=), by queue then application."""
    query = query_of(request, RuntimeConfigsQuery)
    service = job_service(request)
    queue = None if query.queue is None else service.queues.by_id_or_name(query.queue)[1].name
    app = None if query.application is None else service.applications.get(query.application)
    found = service.applications.runtimes(
        queue=queue, application_id=None if app is None else app.id
    )
    return json_response([_runtime_record(*entry) for entry in found])


RUNTIME_PATH = "/queues/{queue_id}/applications/{application}/runtime-config"


@api.get(RUNTIME_PATH, scope=Scope.READ, response=RuntimeConfigRecord, errors=(NotFound,))
async def read_runtime_config(request: web.Request) -> web.Response:
    """How an application runs in a queue."""
    service = job_service(request)
    _, queue = service.queues.by_id_or_name(request.match_info["queue_id"])
    app = service.applications.get(request.match_info["application"])
    runtime = service.applications.runtime(queue.name, app.id)
    if runtime is None:
        raise NotFound(
            f"application {app.config.reference} has no runtime configuration in queue"
            f" {queue.name!r}; set one with PUT {request.path}",
            details={"queue": queue.name, "application": app.id},
        )
    return json_response(_runtime_record(queue.name, app, runtime))


@api.put(
    RUNTIME_PATH,
    scope=Scope.ADMIN,
    body=RuntimeConfig,
    response=RuntimeConfigRecord,
    errors=(NotFound,),
)
async def set_runtime_config(request: web.Request) -> web.Response:
    """Set how an application runs in a queue: {env, default_resources, working_dir, attributes}."""
    service = job_service(request)
    _, queue = service.queues.by_id_or_name(request.match_info["queue_id"])
    key = request.match_info["application"]
    runtime = await service.applications.set_runtime(queue, key, raw_body_of(request))
    app = service.applications.get(key)
    return json_response(_runtime_record(queue.name, app, runtime))


@api.delete(RUNTIME_PATH, scope=Scope.ADMIN, response=Ack, errors=(NotFound,))
async def delete_runtime_config(request: web.Request) -> web.Response:
    """Remove how an application runs in a queue (its jobs there then run as it says alone)."""
    service = job_service(request)
    _, queue = service.queues.by_id_or_name(request.match_info["queue_id"])
    await service.applications.delete_runtime(queue.name, request.match_info["application"])
    return json_response({"success": True})
