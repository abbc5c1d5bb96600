"""Acceptance: what a submitted body becomes as a job, or why it is refused.

Every check a submit (``POST /jobs/submit``), a create (``POST /jobs``), a change (``PATCH
/jobs/{id}``) and a dry run (``POST /jobs/plan``) makes, in one place, each refusal an
:class:`~apportion.errors.InvalidRequest` naming the field of the body: the queue exists; the
job's application completes it (jobs/applications.py); the queue's defaults and limits apply
and could ever let it start (docs/jobs.md, "Queue limits"), its quota too; its dependency names
jobs of its account (jobs/dependencies.py); its array is well formed (jobs/arrays.py); its
working directory and environment are within the job boundary; some cluster of its queue could
hold all its workers at once; its input files and parent job are its account's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from apportion.engine.capacity import gang_capacity
from apportion.engine.requests import parse_request
from apportion.errors import InvalidRequest, NotFound
from apportion.files import FileBook
from apportion.jobs import dependencies
from apportion.jobs.applications import ApplicationBook
from apportion.jobs.arrays import parse_array
from apportion.jobs.boundary import JobBoundary
from apportion.jobs.models import (
    JobConfig,
    QueueConfig,
    SubmitRequest,
    parse_model,
    worker_amounts,
)
from apportion.jobs.quota import beyond_reach, gpu_flavors, job_usage
from apportion.jobs.records import JobBook, QueueBook
from apportion.jobs.staging import ARCHIVES, archive_kind
from apportion.ownership import Owner
from apportion.registry.fleet import FleetView


class Acceptance:
    """The checks of a submitted body (see the module's docstring)."""

    def __init__(
        self,
        *,
        queues: QueueBook,
        applications: ApplicationBook,
        jobs: JobBook,
        files: FileBook,
        boundary: JobBoundary,
        fleet: FleetView,
        candidates: Callable[[QueueConfig], list[str]],
    ) -> None:
        """``candidates(queue)``: the clusters the queue places on (:class:`InvalidRequest`
        for a filter that cannot be evaluated now)."""
        self._queues = queues
        self._applications = applications
        self._jobs = jobs
        self._files = files
        self._boundary = boundary
        self._fleet = fleet
        self._candidates = candidates

    def accept(self, body: Any, owner: Owner) -> tuple[JobConfig, int, QueueConfig]:
        """A submitted body as the job it would be: its config (its application's and queue's
        settings applied, its dependency's jobs named in full), its priority and its queue —
        or :class:`InvalidRequest` naming the field."""
        request = parse_model(SubmitRequest, body)
        config = request.config
        queue = self._queues.get(config.queue) if config.queue in self._queues.names() else None
        if queue is None:
            raise InvalidRequest(
                f"config.queue {config.queue!r} does not exist; list queues with GET /queues",
                path="body.config.queue",
            )
        config, admin_env = self._applications.complete(config, queue)
        config = self._fit_to_queue(config, queue)
        config = self._with_dependency(config, owner)
        if config.array is not None:
            parse_array(config.array)  # refused now, naming the field, not at its first task
        self._boundary.check(config, queue, owner.account)
        admin_env = {**queue.env, **admin_env}
        if admin_env:  # set by an admin (queues, applications): not held to the jobs' env rule
            merged = {**config.model_dump(), "env": {**admin_env, **config.env}}
            config = parse_model(JobConfig, merged, prefix="body.config")
        self._check_could_start(config, queue)
        self._check_inputs(config, owner)
        self._check_parent(config, owner)
        return config, request.priority, queue

    def _with_dependency(self, config: JobConfig, owner: Owner) -> JobConfig:
        """``config`` with its dependency's jobs named by their whole ids; :class:`InvalidRequest`
        naming ``body.config.dependency`` for a malformed one or a job that is not the
        account's (jobs/dependencies.py)."""
        if config.dependency is None:
            return config
        path = "body.config.dependency"

        def resolve(given: str) -> str:
            try:
                return self._jobs.resolve(
                    given, visible=lambda job: job.owner.account == owner.account
                ).job_id
            except NotFound:
                raise InvalidRequest(
                    f"config.dependency names job {given!r}, which is no job of account"
                    f" {owner.account!r}; list jobs with GET /jobs",
                    path=path,
                ) from None
            except InvalidRequest as exc:  # a prefix several jobs share
                raise InvalidRequest(f"config.dependency: {exc.message}", path=path) from None

        terms = dependencies.parse(config.dependency, resolve, path=path)
        return config.model_copy(update={"dependency": dependencies.text_of(terms)})

    def _check_parent(self, config: JobConfig, owner: Owner) -> None:
        """:class:`InvalidRequest` for a ``parent_job_id`` that is no job of the account."""
        parent = config.parent_job_id
        found = self._jobs.jobs.get(parent or "")
        if parent is not None and (found is None or found.owner.account != owner.account):
            raise InvalidRequest(
                f"config.parent_job_id {parent!r} is no job of account {owner.account!r};"
                " list jobs with GET /jobs",
                path="body.config.parent_job_id",
            )

    def _check_inputs(self, config: JobConfig, owner: Owner) -> None:
        """:class:`InvalidRequest` naming the field for an input file that is not one of the
        job's account's files, one ``decompress`` cannot extract, or two of one name."""
        names: set[str] = set()
        for index, wanted in enumerate(config.input_files):
            where = f"body.config.input_files[{index}]"
            try:
                record = self._files.get(wanted.id, visible=lambda o: o.account == owner.account)
            except NotFound:
                raise InvalidRequest(
                    f"config.input_files[{index}].id {wanted.id!r} is no file of account"
                    f" {owner.account!r}; upload it first (POST /files)",
                    path=f"{where}.id",
                ) from None
            if wanted.decompress and archive_kind(record.name) is None:
                raise InvalidRequest(
                    f"config.input_files[{index}] ({record.name!r}) is no archive decompress"
                    f" takes ({', '.join(ARCHIVES)}); set decompress to false to copy it",
                    path=f"{where}.decompress",
                )
            name = PurePosixPath(record.name).name  # as it is staged
            if not wanted.decompress and name in names:
                raise InvalidRequest(
                    f"config.input_files[{index}] is a second file named {name!r}; a"
                    " working directory holds one file of a name",
                    path=f"{where}.id",
                )
            names.add(name)

    @staticmethod
    def _fit_to_queue(config: JobConfig, queue: QueueConfig) -> JobConfig:
        """``config`` with its queue's settings applied (docs/jobs.md, "Queue limits"): without
        a ``working_dir`` of its own the job runs in the queue's, without a walltime it gets
        the queue's ``default_walltime``; an amount the job leaves
        unset is the queue's default, else its per-worker maximum (seed 000's order).
        :class:`InvalidRequest` naming the field when the job asks more than a worker may
        have, more than the queue's total or its quota allows, or more workers than its cap:
        it could never start."""
        cap = queue.worker_cap
        if cap is not None and config.replica_count > cap:
            raise InvalidRequest(
                f"config.replica_count {config.replica_count} can never run in queue "
                f"{queue.name!r}: its cap is {cap} worker instances",
                path="body.config.replica_count",
            )
        if config.working_dir is None and queue.working_dir is not None:
            config = config.model_copy(update={"working_dir": queue.working_dir})
        if config.walltime is None and queue.default_walltime is not None:
            config = config.model_copy(update={"walltime": queue.default_walltime})
        most = queue.maximum_walltime
        if most is not None and (config.walltime is None or config.walltime > most):
            given = "none" if config.walltime is None else f"{config.walltime:g} s"
            raise InvalidRequest(
                f"config.walltime ({given}) must be at most {most:g} s in queue {queue.name!r}"
                f" (its maximum_walltime); ask for at most {most:g} s",
                path="body.config.walltime",
            )
        resources = config.resources
        unset = {
            name: amount
            for source in (queue.maximum_resources, queue.default_resources)
            for name, amount in source.amounts().items()
            if name not in resources.model_fields_set
        }  # the default is written last, so it wins over the maximum
        if unset:
            resources = resources.model_copy(update=unset)
            config = config.model_copy(update={"resources": resources})
        asked = worker_amounts(resources)
        for name, most in queue.maximum_resources.amounts().items():
            if asked.get(name, 0) > most:
                raise InvalidRequest(
                    f"config.resources.{name} {asked[name]} is more than queue {queue.name!r}"
                    f" allows a worker (maximum_resources.{name} {most}); ask for at most {most}",
                    path=f"body.config.resources.{name}",
                )
        for name, total in queue.maximum_allowed_resources.amounts().items():
            if name not in asked:
                raise InvalidRequest(
                    f"queue {queue.name!r} limits the {name} of its running jobs to {total}"
                    f" (maximum_allowed_resources.{name}); set config.resources.{name}",
                    path=f"body.config.resources.{name}",
                )
            whole = asked[name] * config.replica_count
            if whole > total:
                raise InvalidRequest(
                    f"the job asks for {whole} {name} ({asked[name]} per worker ×"
                    f" {config.replica_count}) and can never run in queue {queue.name!r}: its"
                    f" running jobs may hold {total} (maximum_allowed_resources.{name})",
                    path=f"body.config.resources.{name}",
                )
        _check_quota(config, queue)
        return config

    def _check_could_start(self, config: JobConfig, queue: QueueConfig) -> None:
        """:class:`InvalidRequest` when no cluster of ``queue`` could ever hold all the job's
        workers, with every GPU free (a GPU model none has, more GPUs than one cluster
        holds). Without a cluster to compare with (none registered yet, a queue filter that
        fails now) the job is accepted and waits, saying why."""
        try:
            candidates = self._candidates(queue)
        except InvalidRequest:
            return
        if not candidates:
            return
        request = parse_request(config.resources.as_request(), path="body.config.resources")
        fleet = self._fleet
        with fleet.lock:
            capacity = gang_capacity(fleet.structure, candidates, request, config.replica_count)
        if capacity.workers >= config.replica_count:
            return
        workers = config.replica_count
        best = (
            f"the most any could hold is {capacity.workers} ({capacity.cluster_id})"
            if capacity.cluster_id is not None
            else "none has a node that could hold one"
        )
        raise InvalidRequest(
            f"the job can never start in queue {queue.name!r}: its {workers} worker(s) of"
            f" {request.describe()} each must run in one cluster, and of its"
            f" {len(candidates)} cluster(s), with every GPU free, {best}; ask for less, or"
            " another GPU model",
            path="body.config.resources",
        )


def _check_quota(config: JobConfig, queue: QueueConfig) -> None:
    """:class:`InvalidRequest` naming the field when ``queue``'s quota could never let the job
    (its config with the queue's defaults applied) start: an amount the quota counts left
    unset, GPUs of no model the quota has, or more than any of its models allows
    (docs/scheduling.md)."""
    quota = queue.quota
    if quota is None:
        return
    resources = config.resources
    asked = worker_amounts(resources)
    for name, limits in (("vcpus", quota.vcpus), ("memory_mb", quota.memory_mb)):
        if limits is not None and name not in asked:
            raise InvalidRequest(
                f"queue {queue.name!r} has a quota of the {name} of its jobs"
                f" (quota.{name}); set config.resources.{name}",
                path=f"body.config.resources.{name}",
            )
    flavors = gpu_flavors(queue, resources)
    if not flavors:
        raise InvalidRequest(
            f"queue {queue.name!r} has a quota of GPUs of models {', '.join(quota.gpus)}"
            f" only; ask for one of them (config.resources.gpu_model)",
            path="body.config.resources.gpu_model",
        )
    reach = [beyond_reach(queue, job_usage(resources, config.replica_count, m)) for m in flavors]
    if all(words is not None for words in reach):
        raise InvalidRequest(
            f"the job can never run in queue {queue.name!r}: {'; '.join(map(str, reach))};"
            " ask for less",
            path="body.config.resources",
        )
