"""Seed 000's API (the AVxcelerate Resource Manager's ``/api/resources/v1``) over Apportion's
own queues, applications and jobs (docs/seeds.md).

A thin translation, not a second job system: each route calls what the native routes call
and renames. Queues, applications and jobs are named by integer — the queue's and the
application's ``number``, the job's submission number — each given once and never again.
Resources are seed 000's ``{cpu, memory_gb}`` (Apportion's ``vcpus`` and ``memory_mb``). A job
runs its application's command followed by its ``arguments`` (the ``arguments`` alone when the
application has no command) in its queue, with the application's runtime configuration there.
Statuses are the seed's: ``pending`` (created, queued, scheduled), ``running``, ``succeeded``
and ``failed`` (a cancelled job too: its ``failed_reason`` says so). Listings take
``filter_exp`` (:mod:`apportion.server.odata_filter`), ``offset`` and ``limit`` (at most 100).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from apportion.errors import Conflict, Forbidden, InvalidRequest, NotFound
from apportion.jobs.applications import Application
from apportion.jobs.models import JobStatus, QueueConfig, parse_model
from apportion.jobs.records import Job
from apportion.jobs.service import JobService
from apportion.server.auth import Scope, principal_of
from apportion.server.http_common import ctx, json_body, json_response
from apportion.server.odata_filter import compile_filter
from apportion.server.routes_jobs import job_service, visible_jobs
from apportion.server.routing import ApiRoutes, query_of
from apportion.timefmt import iso_utc

api = ApiRoutes("seed 000 (AVxcelerate Resource Manager)", on_leader=True)

PREFIX = "/api/resources/v1"
HEALTH_PATH = f"{PREFIX}/health"  # public, as /healthz

STATUS_NAMES = {
    JobStatus.CREATED: "pending",
    JobStatus.QUEUED: "pending",
    JobStatus.SCHEDULED: "pending",
    JobStatus.RUNNING: "running",
    JobStatus.COMPLETED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "failed",
}
"""Seed 000's name of each job status."""

ATTRIBUTES_LABEL = "avx.attributes"
"""The label that keeps a job's seed-000 ``attributes`` (JSON), which Apportion has no field for."""


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Seed):
    """Seed 000's ``ResourcesDefinition``."""

    cpu: StrictInt | None = Field(None, ge=1)
    memory_gb: StrictInt | StrictFloat | None = Field(None, gt=0)

    def native(self) -> dict[str, int]:
        amounts = {"vcpus": self.cpu}
        if self.memory_gb is not None:
            amounts["memory_mb"] = max(1, round(self.memory_gb * 1024))
        return {k: v for k, v in amounts.items() if v is not None}


def seed_resources(amounts: Mapping[str, int | None]) -> dict[str, Any] | None:
    """Apportion's amounts as seed 000's ``{cpu, memory_gb}`` (None when neither is set)."""
    vcpus, memory_mb = amounts.get("vcpus"), amounts.get("memory_mb")
    if vcpus is None and memory_mb is None:
        return None
    return {"cpu": vcpus, "memory_gb": None if memory_mb is None else memory_mb / 1024}


class QueueCreate(_Seed):
    """Seed 000's ``QueueCreate``; ``working_dir`` unset means each job's own directory."""

    name: StrictStr
    description: StrictStr
    plugin: StrictStr
    working_dir: StrictStr | None = None
    default_resources: Resources | None = None
    maximum_resources: Resources | None = None
    maximum_allowed_worker_instances: StrictInt = -1
    maximum_allowed_resources: Resources | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    storages: list[Any] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    def native(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True)
        for field in ("default_resources", "maximum_resources", "maximum_allowed_resources"):
            value: Resources | None = getattr(self, field)
            if value is not None:
                body[field] = value.native()
        return body


class ApplicationCreate(_Seed):
    """Seed 000's ``ApplicationCreate``; ``attributes.command`` is the application's command."""

    name: StrictStr
    version: StrictStr
    env: dict[str, str] = Field(default_factory=dict)
    parent: StrictStr | None = None
    application_type: StrictStr | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def native(self) -> dict[str, Any]:
        attributes = dict(self.attributes)
        command = attributes.pop("command", [])
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise InvalidRequest(
                "attributes.command must be a list of strings (the program and its arguments)",
                path="body.attributes.command",
            )
        for seed_field in ("parent", "application_type"):
            if getattr(self, seed_field) is not None:
                attributes[seed_field] = getattr(self, seed_field)
        return {
            "name": self.name,
            "version": self.version,
            "command": command,
            "env": self.env,
            "attributes": attributes,
        }


class RuntimeCreate(_Seed):
    """Seed 000's ``AppRuntimeConfigCreate``; ``attributes.working_dir`` is where its jobs run."""

    env: dict[str, str] = Field(default_factory=dict)
    default_resources: Resources | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    service_port: StrictInt | None = Field(None, ge=1, le=65535)

    def native(self) -> dict[str, Any]:
        attributes = dict(self.attributes)
        working_dir = attributes.pop("working_dir", None)
        if self.service_port is not None:
            attributes["service_port"] = self.service_port
        body: dict[str, Any] = {"env": self.env, "attributes": attributes}
        if working_dir is not None:
            body["working_dir"] = working_dir
        if self.default_resources is not None:
            body["default_resources"] = self.default_resources.native()
        return body


class JobCreate(_Seed):
    """Seed 000's ``JobCreate``."""

    name: StrictStr
    queue_id: StrictInt
    application_id: StrictInt
    parent_job_id: StrictInt | None = None
    arguments: list[StrictStr] = Field(default_factory=list, max_length=4096)
    replica_count: StrictInt = 1
    auto_clean: StrictBool = False
    resources_requested: Resources | None = None
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)


class ListQuery(_Seed):
    """A listing's ``filter_exp`` (OData), ``offset`` and ``limit`` (at most 100)."""

    filter_exp: str | None = Field(None, max_length=4096)
    offset: int = Field(0, ge=0, le=10**9)
    limit: int = Field(100, ge=1, le=100)


class RuntimeQuery(_Seed):
    """``GET /app-runtime-config``: those of one queue, of one application, or all."""

    queue_id: int | None = None
    app_id: int | None = None


# ---------------------------------------------------------------- translations
NATIVE_NAMES = {
    "body.config.name": "body.name",
    "body.config.replica_count": "body.replica_count",
    "body.config.resources.vcpus": "body.resources_requested.cpu",
    "body.config.resources.memory_mb": "body.resources_requested.memory_gb",
    "body.config.resources": "body.resources_requested",
    "body.config.env": "body.env",
    "body.config.labels": "body.labels",
    "body.config.command": "body.arguments",
    "body.config.working_dir": "body.queue_id",  # the queue's, or its runtime configuration's
    "body.config.application": "body.application_id",
    "body.config.parent_job_id": "body.parent_job_id",
    "body.config.auto_clean": "body.auto_clean",
}
"""Seed 000's name of a native job field an error names."""


def _in_seed_words(exc: InvalidRequest) -> InvalidRequest:
    """The native refusal of a job, naming the seed's field instead of Apportion's."""
    path = exc.path or ""
    for native, seed in NATIVE_NAMES.items():
        if path == native or path.startswith((native + ".", native + "[")):
            message = exc.message.replace(native.removeprefix("body."), seed.removeprefix("body."))
            return InvalidRequest(message, path=seed + path[len(native) :])
    return exc


def queue_object(service: JobService, name: str) -> dict[str, Any]:
    entry = service.queues.entry(name)
    config: QueueConfig = entry.config
    return {
        "id": entry.number,
        "name": config.name,
        "description": config.description,
        "plugin": config.plugin,
        "working_dir": config.working_dir,
        "default_resources": seed_resources(config.default_resources.amounts()),
        "maximum_resources": seed_resources(config.maximum_resources.amounts()),
        "maximum_allowed_worker_instances": config.maximum_allowed_worker_instances,
        "maximum_allowed_resources": seed_resources(config.maximum_allowed_resources.amounts()),
        "attributes": config.attributes,
        "storages": config.storages,
        "env": config.env,
    }


def application_object(app: Application) -> dict[str, Any]:
    attributes = dict(app.config.attributes)
    parent = attributes.pop("parent", None)
    application_type = attributes.pop("application_type", None)
    return {
        "id": app.number,
        "name": app.config.name,
        "version": app.config.version,
        "env": app.config.env,
        "parent": parent,
        "application_type": application_type,
        "attributes": {**attributes, "command": app.config.command},
    }


def runtime_object(service: JobService, queue: str, app: Application) -> dict[str, Any]:
    runtime = service.applications.runtime(queue, app.id)
    assert runtime is not None
    attributes = dict(runtime.attributes)
    service_port = attributes.pop("service_port", None)
    if runtime.working_dir is not None:
        attributes["working_dir"] = runtime.working_dir
    return {
        "queue_id": service.queues.entry(queue).number,
        "app_id": app.number,
        "env": runtime.env,
        "default_resources": seed_resources(runtime.default_resources.amounts()),
        "attributes": attributes,
        "service_port": service_port,
    }


def job_object(service: JobService, job: Job) -> dict[str, Any]:
    config = job.config
    app = _application_of(service, config.application)
    command = list(config.command)
    prefix = [] if app is None else app.config.command
    arguments = command[len(prefix) :] if command[: len(prefix)] == prefix else command
    parent = service.jobs.jobs.get(config.parent_job_id or "")
    labels = dict(config.labels)
    attributes = json.loads(labels.pop(ATTRIBUTES_LABEL, "{}"))
    queue = service.queues.entry(job.queue).number if job.queue in service.queues.names() else None
    moments = (job.end_time, job.start_time, job.created_at)
    return {
        "id": job.seq,
        "internal_id": job.job_id,
        "name": job.name,
        "queue_id": queue,
        "application_id": None if app is None else app.number,
        "parent_job_id": None if parent is None else parent.seq,
        "arguments": arguments,
        "replica_count": config.replica_count,
        "auto_clean": config.auto_clean,
        "resources_requested": seed_resources(config.resources.model_dump()),
        "env": config.env,
        "labels": labels,
        "attributes": attributes,
        "status": STATUS_NAMES[job.status],
        "cleaned": job.cleaned,
        "created_at": iso_utc(job.created_at),
        "status_updated_at": iso_utc(next(m for m in moments if m is not None)),
        "failed_reason": job.failed_reason
        or (job.reason if job.status is JobStatus.CANCELLED else None),
    }


def _application_of(service: JobService, reference: str | None) -> Application | None:
    if reference is None:
        return None
    try:
        return service.applications.get(reference)
    except NotFound:  # deleted since: the job keeps what it was given
        return None


def _listing(
    request: web.Request, items: list[dict[str, Any]], fields: Callable[[], set[str]]
) -> web.Response:
    """One page of ``items``, those ``filter_exp`` selects (over their scalar fields)."""
    query = query_of(request, ListQuery)
    if query.filter_exp is not None:
        matches = compile_filter(query.filter_exp, fields())
        items = [item for item in items if matches(item)]
    return json_response(items[query.offset : query.offset + query.limit])


def _scalar_fields(model_fields: list[str], sample: Mapping[str, Any] | None) -> set[str]:
    """The fields a filter may name: those that are not objects or lists."""
    if sample is None:
        return set(model_fields)
    return {k for k, v in sample.items() if not isinstance(v, dict | list)}


def _number(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"no {name.removesuffix('_id')} {raw!r}: seed 000 names it by integer")
    return int(raw)


# ---------------------------------------------------------------- health and plugins
@api.get(HEALTH_PATH, scope=None, public=True, response=dict[str, Any])
async def rm_health(request: web.Request) -> web.Response:
    """Liveness, as seed 000's /health: {"status": "ok"}."""
    return json_response({"status": "ok"})


@api.get(f"{PREFIX}/plugins", scope=Scope.READ, response=list[dict[str, Any]])
async def rm_plugins(request: web.Request) -> web.Response:
    """The scheduler adapter plugins: {name, module_name, class_name, attributes}."""
    plugins = []
    for plugin in ctx(request).plugins:
        shown = plugin.public()
        plugins.append(
            {
                "name": plugin.name,
                "module_name": plugin.module_name,
                "class_name": plugin.class_name,
                "attributes": {k: shown[k] for k in ("builtin", "available", "error")},
            }
        )
    return json_response(plugins)


@api.post(f"{PREFIX}/plugins", scope=Scope.ADMIN, response=dict[str, Any])
async def rm_register_plugin(request: web.Request) -> web.Response:
    """Refused: a plugin is an installed Python package (entry point apportion.adapters)."""
    raise InvalidRequest(
        "plugins are not registered over REST: a plugin is a Python package installed on the"
        " server, found through the entry point group apportion.adapters (docs/adapters.md);"
        " GET /plugins lists them",
        path="body",
    )


# ---------------------------------------------------------------- queues
@api.get(f"{PREFIX}/queues", scope=Scope.READ, query=ListQuery, response=list[dict[str, Any]])
async def rm_queues(request: web.Request) -> web.Response:
    """Queues as seed 000's QueueRead (?filter_exp=, offset, limit)."""
    service = job_service(request)
    items = sorted(
        (queue_object(service, name) for name in service.queues.names()), key=lambda q: q["id"]
    )
    return _listing(
        request, items, lambda: _scalar_fields(list(QueueCreate.model_fields), items[0])
    )


@api.post(
    f"{PREFIX}/queues",
    scope=Scope.ADMIN,
    body_doc=QueueCreate,
    response=int,
    status=201,
    errors=(Conflict,),
)
async def rm_create_queue(request: web.Request) -> web.Response:
    """Create a queue; its integer id."""
    return await _write_queue(request, create=True)


@api.put(
    f"{PREFIX}/queues", scope=Scope.ADMIN, body_doc=QueueCreate, response=int, errors=(NotFound,)
)
async def rm_update_queue(request: web.Request) -> web.Response:
    """Replace a queue, found by name; its integer id."""
    return await _write_queue(request, create=False)


async def _write_queue(request: web.Request, *, create: bool) -> web.Response:
    service = job_service(request)
    body = parse_model(QueueCreate, await json_body(request)).native()
    plugin = body.get("plugin")
    if plugin not in service.driver.adapters:
        raise InvalidRequest(
            f"plugin {plugin!r} is no scheduler adapter of this server; it runs"
            f" {', '.join(sorted(service.driver.adapters))} (GET {PREFIX}/plugins)",
            path="body.plugin",
        )
    stored = await (service.queues.create(body) if create else service.queues.update(body))
    if not create:
        service.wake()
    return json_response(service.queues.entry(stored["name"]).number, status=201 if create else 200)


@api.get(
    f"{PREFIX}/queues/{{queue_id}}", scope=Scope.READ, response=dict[str, Any], errors=(NotFound,)
)
async def rm_queue(request: web.Request) -> web.Response:
    """One queue by its integer id."""
    service = job_service(request)
    entry = service.queues.by_number(_number(request, "queue_id"))
    return json_response(queue_object(service, entry.config.name))


# ---------------------------------------------------------------- applications
@api.get(f"{PREFIX}/applications", scope=Scope.READ, query=ListQuery, response=list[dict[str, Any]])
async def rm_applications(request: web.Request) -> web.Response:
    """Applications as seed 000's ApplicationRead (?filter_exp=, offset, limit)."""
    items = [application_object(app) for app in job_service(request).applications.all()]
    fields = [*ApplicationCreate.model_fields, "id"]
    return _listing(request, items, lambda: _scalar_fields(fields, items[0] if items else None))


@api.post(
    f"{PREFIX}/applications",
    scope=Scope.ADMIN,
    body_doc=ApplicationCreate,
    response=int,
    status=201,
    errors=(Conflict,),
)
async def rm_create_application(request: web.Request) -> web.Response:
    """Register an application; its integer id."""
    body = parse_model(ApplicationCreate, await json_body(request)).native()
    app = await job_service(request).applications.create(body)
    return json_response(app.number, status=201)


@api.put(
    f"{PREFIX}/applications",
    scope=Scope.ADMIN,
    body_doc=ApplicationCreate,
    response=int,
    errors=(NotFound,),
)
async def rm_update_application(request: web.Request) -> web.Response:
    """Replace an application, found by name and version; its integer id."""
    body = parse_model(ApplicationCreate, await json_body(request)).native()
    return json_response((await job_service(request).applications.update(body)).number)


@api.get(
    f"{PREFIX}/applications/{{app_id}}",
    scope=Scope.READ,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rm_application(request: web.Request) -> web.Response:
    """One application by its integer id."""
    app = job_service(request).applications.by_number(_number(request, "app_id"))
    return json_response(application_object(app))


# ---------------------------------------------------------------- app-runtime-config
@api.get(
    f"{PREFIX}/app-runtime-config",
    scope=Scope.READ,
    query=RuntimeQuery,
    response=list[dict[str, Any]],
    errors=(NotFound,),
)
async def rm_runtime_configs(request: web.Request) -> web.Response:
    """Runtime configurations (?queue_id=, ?app_id=)."""
    service = job_service(request)
    query = query_of(request, RuntimeQuery)
    queue = None if query.queue_id is None else service.queues.by_number(query.queue_id)
    app = None if query.app_id is None else service.applications.by_number(query.app_id)
    found = service.applications.runtimes(
        queue=None if queue is None else queue.config.name,
        application_id=None if app is None else app.id,
    )
    return json_response([runtime_object(service, q, a) for q, a, _ in found])


@api.get(
    f"{PREFIX}/app-runtime-config/application/{{app_id}}",
    scope=Scope.READ,
    response=list[dict[str, Any]],
    errors=(NotFound,),
)
async def rm_application_runtime_configs(request: web.Request) -> web.Response:
    """An application's runtime configurations, in every queue."""
    service = job_service(request)
    app = service.applications.by_number(_number(request, "app_id"))
    found = service.applications.runtimes(application_id=app.id)
    return json_response([runtime_object(service, q, a) for q, a, _ in found])


RUNTIME_PATH = f"{PREFIX}/app-runtime-config/{{queue_id}}/application/{{app_id}}"


@api.post(
    RUNTIME_PATH,
    scope=Scope.ADMIN,
    body_doc=RuntimeCreate,
    response=dict[str, Any],
    status=201,
    errors=(NotFound, Conflict),
)
async def rm_create_runtime_config(request: web.Request) -> web.Response:
    """Set how an application runs in a queue (409 when it is set: PUT replaces it)."""
    return await _write_runtime(request, create=True)


@api.put(
    RUNTIME_PATH,
    scope=Scope.ADMIN,
    body_doc=RuntimeCreate,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rm_update_runtime_config(request: web.Request) -> web.Response:
    """Replace how an application runs in a queue (404 when it is not set: POST sets it)."""
    return await _write_runtime(request, create=False)


async def _write_runtime(request: web.Request, *, create: bool) -> web.Response:
    service = job_service(request)
    queue = service.queues.by_number(_number(request, "queue_id")).config
    app = service.applications.by_number(_number(request, "app_id"))
    body = parse_model(RuntimeCreate, await json_body(request)).native()
    exists = service.applications.runtime(queue.name, app.id) is not None
    if create and exists:
        raise Conflict(
            f"application {app.number} has a runtime configuration in queue {queue.name!r};"
            " replace it with PUT",
            details={"queue_id": service.queues.entry(queue.name).number, "app_id": app.number},
        )
    if not create and not exists:
        raise NotFound(
            f"application {app.number} has no runtime configuration in queue {queue.name!r};"
            " set one with POST",
            details={"queue_id": service.queues.entry(queue.name).number, "app_id": app.number},
        )
    await service.applications.set_runtime(queue, app.id, body)
    return json_response(runtime_object(service, queue.name, app), status=201 if create else 200)


# ---------------------------------------------------------------- jobs
def _job(request: web.Request, *, change: bool = False) -> Job:
    """The job of the path's integer id, if the key may see it (and change it, with
    ``change``); one it may not see answers as an unknown id."""
    number = _number(request, "job_id")
    who = principal_of(request).actor
    job = next((j for j in visible_jobs(request) if j.seq == number), None)
    if job is None:
        raise NotFound(f"no job {number}", details={"job_id": number})
    if change and not who.may_change(job.owner):
        raise Forbidden(
            f"job {number} was submitted by user {job.owner.user!r}; only that user or an"
            " admin key may change it",
            details={"job_id": number},
        )
    return job


@api.get(f"{PREFIX}/jobs", scope=Scope.READ, query=ListQuery, response=list[dict[str, Any]])
async def rm_jobs(request: web.Request) -> web.Response:
    """Jobs as seed 000's JobRead, oldest first (?filter_exp=, offset, limit)."""
    service = job_service(request)
    items = [job_object(service, job) for job in visible_jobs(request)]
    fields = [*JobCreate.model_fields, "id", "internal_id", "status", "cleaned"]
    return _listing(request, items, lambda: _scalar_fields(fields, items[0] if items else None))


@api.post(
    f"{PREFIX}/jobs",
    scope=Scope.SUBMIT,
    body_doc=JobCreate,
    response=int,
    status=201,
    errors=(NotFound, Conflict),
)
async def rm_submit(request: web.Request) -> web.Response:
    """Submit a job (its application, in its queue); its integer id."""
    service = job_service(request)
    asked = parse_model(JobCreate, await json_body(request))
    config = _native_job(service, asked, principal_of(request).actor.owner.account)
    try:
        job = await service.submit({"config": config}, principal_of(request).actor.owner)
    except InvalidRequest as exc:
        raise _in_seed_words(exc) from None
    return json_response(job.seq, status=201)


def _native_job(service: JobService, asked: JobCreate, account: str) -> dict[str, Any]:
    """Apportion's job config for seed 000's ``JobCreate``."""
    try:
        queue = service.queues.by_number(asked.queue_id).config.name
    except NotFound:
        raise InvalidRequest(
            f"queue_id {asked.queue_id} is no queue; list them with GET {PREFIX}/queues",
            path="body.queue_id",
        ) from None
    try:
        app = service.applications.by_number(asked.application_id)
    except NotFound:
        raise InvalidRequest(
            f"application_id {asked.application_id} is no application; list them with GET"
            f" {PREFIX}/applications",
            path="body.application_id",
        ) from None
    config: dict[str, Any] = {
        "name": _job_name(asked.name),
        "queue": queue,
        "application": app.config.reference,
        "command": [*app.config.command, *asked.arguments] if asked.arguments else [],
        "replica_count": asked.replica_count,
        "auto_clean": asked.auto_clean,
        "env": asked.env,
        "labels": dict(asked.labels),
    }
    if asked.attributes:
        config["labels"][ATTRIBUTES_LABEL] = json.dumps(asked.attributes)
    if asked.resources_requested is not None:
        config["resources"] = asked.resources_requested.native()
    if asked.parent_job_id is not None:
        parent = next(
            (
                j
                for j in service.jobs.jobs.values()
                if j.seq == asked.parent_job_id and j.owner.account == account
            ),
            None,
        )
        if parent is None:
            raise InvalidRequest(
                f"parent_job_id {asked.parent_job_id} is no job of your account",
                path="body.parent_job_id",
            )
        config["parent_job_id"] = parent.job_id
    return config


def _job_name(given: str) -> str:
    """A job name Apportion takes (letters, digits, ``._-``; others become ``-``)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in given)
    return cleaned.strip("-.")[:128] or "job"


@api.get(f"{PREFIX}/jobs/{{job_id}}", scope=Scope.READ, response=dict[str, Any], errors=(NotFound,))
async def rm_job(request: web.Request) -> web.Response:
    """One job by its integer id."""
    return json_response(job_object(job_service(request), _job(request)))


@api.get(f"{PREFIX}/jobs/{{job_id}}/status", scope=Scope.READ, response=str, errors=(NotFound,))
async def rm_job_status(request: web.Request) -> web.Response:
    """The job's status: pending, running, failed or succeeded."""
    return json_response(STATUS_NAMES[_job(request).status])


@api.get(
    f"{PREFIX}/jobs/{{job_id}}/job-stats",
    scope=Scope.READ,
    response=dict[str, Any],
    errors=(NotFound,),
)
async def rm_job_stats(request: web.Request) -> web.Response:
    """{"containers": {"worker": {"name", "exit_codes": {code: workers}}}}: known exit codes."""
    job = _job(request)
    counted = Counter(str(code) for code in job.exit_codes or () if code is not None)
    return json_response(
        {"containers": {"worker": {"name": "worker", "exit_codes": dict(sorted(counted.items()))}}}
    )


@api.post(
    f"{PREFIX}/jobs/{{job_id}}/clean",
    scope=Scope.SUBMIT,
    response=dict[str, Any],
    errors=(NotFound, Forbidden, Conflict),
)
async def rm_clean(request: web.Request) -> web.Response:
    """Clean an ended job (its own working directory); the job, cleaned."""
    job = _job(request, change=True)
    service = job_service(request)
    await service.clean(job.job_id)
    return json_response(job_object(service, job))
