"""Applications and their runtime configuration per queue (seed 000's ``applications`` and
``app-runtime-config``; docs/jobs.md, "Applications").

An application is a named, versioned program an admin registers once — its default command,
its environment and free-form attributes — so that users submit ``application =
"solver:2.1"`` instead of repeating them. Its *runtime configuration* in a queue says how it
runs there: more environment, default resources per worker, a working directory, and
attributes (seed 000's ``image`` — the container image of its jobs there, for adapters that
run containers — ``mount``, ``ports``…, kept and shown).

A job that names an application is completed when it is accepted (submit or create), as its
queue's settings are, so that its record shows what will run: an amount, a variable or a
directory the job sets itself wins; then the runtime configuration's; then the
application's; then the queue's. Environment from the application and its runtime
configuration is an admin's, like the queue's, and is not held to the rule on injection
variables that a job's own ``env`` is.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from apportion import jsonutil
from apportion.errors import Conflict, InvalidRequest, NotFound
from apportion.jobs.models import (
    NAME_PATTERN,
    STORED,
    JobConfig,
    QueueConfig,
    ResourceAmounts,
    check_command,
    check_dir,
    check_env,
    parse_model,
)
from apportion.store.db import Database
from apportion.store.repos.applications import ApplicationRepo, RuntimeRow

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$"


class ApplicationConfig(BaseModel):
    """An application as an admin sends it (``POST /applications``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    description: str = Field("", max_length=4096)
    command: list[str] = Field(default_factory=list, max_length=4096)  # the jobs' default
    env: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)  # kept and shown, not interpreted

    _env = field_validator("env")(check_env)

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str], info: ValidationInfo) -> list[str]:
        return check_command(command, info) if command else command

    @property
    def reference(self) -> str:
        """``name:version``, as a job names it."""
        return f"{self.name}:{self.version}"


class RuntimeConfig(BaseModel):
    """How an application runs in one queue (``PUT /queues/{queue}/applications/{app}``)."""

    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] = Field(default_factory=dict)
    default_resources: ResourceAmounts = Field(default_factory=ResourceAmounts)
    working_dir: str | None = Field(None, max_length=4096)
    attributes: dict[str, Any] = Field(default_factory=dict)  # image, mount, ports…: kept

    _env = field_validator("env")(check_env)
    _working_dir = field_validator("working_dir")(check_dir)


class Application(NamedTuple):
    """An application as the book keeps it: its id, its number (seed 000's integer id) and
    what the admin sent."""

    id: str
    number: int
    config: ApplicationConfig

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "number": self.number, **self.config.model_dump()}


class Completed(NamedTuple):
    """A job's configuration completed by its application (:meth:`ApplicationBook.complete`),
    and the environment the admin set for it (the application's, then the runtime
    configuration's), which the job's own variables override."""

    config: JobConfig
    admin_env: dict[str, str]


class ApplicationBook:
    """Applications and runtime configurations, in memory and in the store; their one owner."""

    def __init__(self, db: Database) -> None:
        self._repo = ApplicationRepo(db)
        self._apps: dict[str, Application] = {}  # by id
        self._runtimes: dict[tuple[str, str], RuntimeConfig] = {}  # by (queue, application id)

    async def load(self) -> None:
        """Read every stored application and runtime configuration (once, at start)."""
        apps, runtimes = await self._repo.all()
        for row in apps:
            config = ApplicationConfig.model_validate(jsonutil.loads(row.document), context=STORED)
            self._apps[row.id] = Application(row.id, row.number, config)
        for runtime in runtimes:
            document = jsonutil.loads(runtime.document)
            self._runtimes[(runtime.queue, runtime.application_id)] = RuntimeConfig.model_validate(
                document, context=STORED
            )

    # ---------------------------------------------------------------- applications
    def all(self) -> list[Application]:
        """Every application, by number."""
        return sorted(self._apps.values(), key=lambda app: app.number)

    def get(self, key: str) -> Application:
        """The application ``key`` names: its id, ``name:version``, or a name only one
        version has; :class:`NotFound` otherwise (saying which versions a name has)."""
        found = self._apps.get(key)
        if found is not None:
            return found
        name, _, version = key.partition(":")
        same_name = [app for app in self.all() if app.config.name == name]
        for app in same_name:
            if app.config.version == version:
                return app
        versions = ", ".join(app.config.version for app in same_name)
        if not version and len(same_name) == 1:
            return same_name[0]
        if not version and same_name:
            raise NotFound(
                f"application {name!r} has versions {versions}: name one, as {name}:VERSION",
                details={"application": key},
            )
        hint = f" (it has versions {versions})" if same_name else ""
        raise NotFound(
            f"no application {key!r}{hint}; list applications with GET /applications",
            details={"application": key},
        )

    def by_number(self, number: int) -> Application:
        """The application of seed 000's integer id ``number`` (:class:`NotFound` otherwise)."""
        for app in self._apps.values():
            if app.number == number:
                return app
        raise NotFound(f"no application {number}", details={"application": number})

    async def create(self, body: Any) -> Application:
        """Register an application; :class:`Conflict` when its name and version exist."""
        config = parse_model(ApplicationConfig, body)
        if any(app.config.reference == config.reference for app in self._apps.values()):
            raise Conflict(
                f"application {config.reference} exists; change it with PUT /applications",
                details={"application": config.reference},
            )
        row = await self._repo.insert(
            uuid.uuid4().hex[:16], config.name, config.version, _document(config), time.time()
        )
        app = Application(row.id, row.number, config)
        self._apps[app.id] = app
        return app

    async def update(self, body: Any) -> Application:
        """Replace the application of the body's name and version (:class:`NotFound`)."""
        config = parse_model(ApplicationConfig, body)
        app = self.get(config.reference)
        await self._repo.replace_document(app.id, _document(config), time.time())
        self._apps[app.id] = app._replace(config=config)
        return self._apps[app.id]

    async def delete(self, key: str) -> None:
        """Forget an application and its runtime configurations. Jobs that named it keep
        what it gave them (they were completed when accepted)."""
        app = self.get(key)
        await self._repo.delete(app.id)
        del self._apps[app.id]
        for pair in [pair for pair in self._runtimes if pair[1] == app.id]:
            del self._runtimes[pair]

    # ---------------------------------------------------------------- runtime configurations
    def runtime(self, queue: str, application_id: str) -> RuntimeConfig | None:
        return self._runtimes.get((queue, application_id))

    def runtimes(
        self, *, queue: str | None = None, application_id: str | None = None
    ) -> list[tuple[str, Application, RuntimeConfig]]:
        """``(queue, application, runtime configuration)`` of every pair, or of the pairs
        of ``queue`` and of ``application_id`` when given; by queue, then application number."""
        found = [
            (q, self._apps[a], runtime)
            for (q, a), runtime in self._runtimes.items()
            if queue in (None, q) and application_id in (None, a)
        ]
        return sorted(found, key=lambda entry: (entry[0], entry[1].number))

    async def set_runtime(self, queue: QueueConfig, key: str, body: Any) -> RuntimeConfig:
        """Store how application ``key`` runs in ``queue``; :class:`InvalidRequest` for a
        default above the queue's per-worker maximum (every job taking it would be refused)."""
        app = self.get(key)
        runtime = parse_model(RuntimeConfig, body)
        most = queue.maximum_resources.amounts()
        for name, amount in runtime.default_resources.amounts().items():
            if name in most and amount > most[name]:
                raise InvalidRequest(
                    f"default_resources.{name} {amount} is more than queue {queue.name!r}"
                    f" allows a worker (maximum_resources.{name} {most[name]})",
                    path=f"body.default_resources.{name}",
                )
        row = RuntimeRow(queue.name, app.id, jsonutil.dumps_str(runtime.model_dump()))
        await self._repo.put_runtime(row, time.time())
        self._runtimes[(queue.name, app.id)] = runtime
        return runtime

    async def delete_runtime(self, queue: str, key: str) -> None:
        """Forget how application ``key`` runs in ``queue`` (:class:`NotFound` if unset)."""
        app = self.get(key)
        if (queue, app.id) not in self._runtimes:
            raise NotFound(
                f"application {app.config.reference} has no runtime configuration in queue"
                f" {queue!r}",
                details={"queue": queue, "application": app.id},
            )
        await self._repo.delete_runtimes(queue=queue, application_id=app.id)
        del self._runtimes[(queue, app.id)]

    async def forget_queue(self, queue: str) -> None:
        """Forget every runtime configuration of a deleted queue."""
        await self._repo.delete_runtimes(queue=queue)
        for pair in [pair for pair in self._runtimes if pair[0] == queue]:
            del self._runtimes[pair]

    # ---------------------------------------------------------------- jobs
    def complete(self, config: JobConfig, queue: QueueConfig) -> Completed:
        """``config`` completed by the application it names, in ``queue`` (see the module's
        docstring for the order); :class:`InvalidRequest` naming ``body.config.application``
        for an unknown one, or ``body.config.command`` when neither the job nor the
        application has a command. A job naming none is returned as it is."""
        if config.application is None:
            return Completed(config, {})
        try:
            app = self.get(config.application)
        except NotFound as exc:
            raise InvalidRequest(
                f"config.application: {exc.message}", path="body.config.application"
            ) from None
        runtime = self.runtime(queue.name, app.id) or RuntimeConfig()
        update: dict[str, Any] = {"application": app.config.reference}
        if not config.command:
            if not app.config.command:
                raise InvalidRequest(
                    f"config.command is empty and application {app.config.reference} has no"
                    " command of its own; give the command to run",
                    path="body.config.command",
                )
            update["command"] = list(app.config.command)
        if config.working_dir is None and runtime.working_dir is not None:
            update["working_dir"] = runtime.working_dir
        image = runtime.attributes.get("image")
        if config.image is None and isinstance(image, str) and image.strip():
            update["image"] = image  # for adapters that run containers (seed 000's)
        defaults = {
            name: amount
            for name, amount in runtime.default_resources.amounts().items()
            if name not in config.resources.model_fields_set
        }
        if defaults:  # set now: the queue's defaults do not replace them
            update["resources"] = config.resources.model_copy(update=defaults)
        return Completed(config.model_copy(update=update), {**app.config.env, **runtime.env})


def _document(config: ApplicationConfig) -> str:
    return jsonutil.dumps_str(config.model_dump())
