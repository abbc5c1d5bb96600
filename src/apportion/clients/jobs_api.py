"""Queues and jobs over REST: the part of :class:`AsyncApportion` that ``sbatch``/``squeue``
users know. A mixin: it needs ``self._rest`` (a :class:`RestTransport`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from apportion.clients.errors import WaitTimeoutError
from apportion.clients.models import (
    Application,
    Job,
    JobArray,
    JobPlan,
    JobPriority,
    JobStatusEntry,
    Queue,
    RuntimeConfig,
)
from apportion.clients.rest import RestTransport

PAGE_SIZE = 100


def submission(
    command: Sequence[str],
    *,
    gpus: int | None = None,
    workers: int = 1,
    queue: str | None = None,
    priority: int = 0,
    name: str | None = None,
    walltime: float | None = None,
    env: Mapping[str, str] | None = None,
    resources: Mapping[str, Any] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """The body of ``POST /jobs/submit`` (and ``/jobs/plan``) for :meth:`JobsAPI.submit`'s
    arguments (see there)."""
    body: dict[str, Any] = {
        "command": list(command),
        "replica_count": workers,
        "resources": {**(resources or {}), **({} if gpus is None else {"gpus": gpus})},
        **config,
    }
    for key, value in (("queue", queue), ("name", name), ("walltime", walltime)):
        if value is not None:
            body[key] = value
    if env:
        body["env"] = dict(env)
    return {"config": body, "priority": priority}


class JobsAPI:
    """Queue and job calls; mixed into :class:`~apportion.clients.AsyncApportion`."""

    _rest: RestTransport

    # ------------------------------------------------------------------ queues
    async def queues(self) -> list[Queue]:
        """Every queue (``GET /queues``)."""
        return [Queue.model_validate(q) for q in await self._rest.call("GET", "/queues")]

    async def queue(self, queue: str) -> Queue:
        """One queue by id or name; :class:`NotFoundError` when there is none."""
        return Queue.model_validate(await self._rest.call("GET", f"/queues/{queue}"))

    async def create_queue(self, body: Mapping[str, Any]) -> Queue:
        """Create a queue (admin); :class:`ConflictError` when the name exists."""
        return Queue.model_validate(await self._rest.call("POST", "/queues", json=dict(body)))

    async def update_queue(self, body: Mapping[str, Any]) -> Queue:
        """Replace a queue found by ``body["name"]`` (admin)."""
        return Queue.model_validate(await self._rest.call("PUT", "/queues", json=dict(body)))

    async def delete_queue(self, queue: str) -> None:
        """Delete a queue that has no waiting or running jobs (admin)."""
        await self._rest.call("DELETE", f"/queues/{queue}")

    async def queue_statistics(self) -> dict[str, Any]:
        """``GET /queue``: total_queued, running_jobs, per queue and per priority."""
        result: dict[str, Any] = await self._rest.call("GET", "/queue")
        return result

    # ------------------------------------------------------------------ applications
    async def applications(self) -> list[Application]:
        """Every registered application (``GET /applications``)."""
        found = await self._rest.call("GET", "/applications")
        return [Application.model_validate(app) for app in found]

    async def application(self, application: str) -> Application:
        """One application by id, ``name:version`` or a name of one version."""
        return Application.model_validate(
            await self._rest.call("GET", f"/applications/{application}")
        )

    async def create_application(self, body: Mapping[str, Any]) -> Application:
        """Register an application (admin): ``{name, version, command, env, description,
        attributes}``; :class:`ConflictError` when its name and version exist."""
        answer = await self._rest.call("POST", "/applications", json=dict(body))
        return Application.model_validate(answer)

    async def update_application(self, body: Mapping[str, Any]) -> Application:
        """Replace the application of ``body``'s name and version (admin)."""
        answer = await self._rest.call("PUT", "/applications", json=dict(body))
        return Application.model_validate(answer)

    async def delete_application(self, application: str) -> None:
        """Delete an application and its runtime configurations (admin)."""
        await self._rest.call("DELETE", f"/applications/{application}")

    async def runtime_configs(
        self, *, queue: str | None = None, application: str | None = None
    ) -> list[RuntimeConfig]:
        """Runtime configurations: every one, or those of ``queue`` and of ``application``."""
        params = {k: v for k, v in (("queue", queue), ("application", application)) if v}
        found = await self._rest.call("GET", "/runtime-configs", params=params)
        return [RuntimeConfig.model_validate(entry) for entry in found]

    async def set_runtime_config(
        self, queue: str, application: str, body: Mapping[str, Any]
    ) -> RuntimeConfig:
        """Set how ``application`` runs in ``queue`` (admin): ``{env, default_resources,
        working_dir, attributes}``."""
        path = f"/queues/{queue}/applications/{application}/runtime-config"
        return RuntimeConfig.model_validate(await self._rest.call("PUT", path, json=dict(body)))

    async def delete_runtime_config(self, queue: str, application: str) -> None:
        """Remove how ``application`` runs in ``queue`` (admin)."""
        await self._rest.call(
            "DELETE", f"/queues/{queue}/applications/{application}/runtime-config"
        )

    # ------------------------------------------------------------------ jobs
    async def submit(
        self,
        command: Sequence[str],
        *,
        gpus: int | None = None,
        workers: int = 1,
        queue: str | None = None,
        priority: int = 0,
        name: str | None = None,
        walltime: float | None = None,
        env: Mapping[str, str] | None = None,
        resources: Mapping[str, Any] | None = None,
        **config: Any,
    ) -> str:
        """Submit a job and return its id. ``command`` is the argv (never a shell string);
        ``gpus`` per worker (merged into ``resources``; unset: the queue's default, else 0);
        other ``config`` keys of CONTRACTS §6
        (``working_dir``, ``labels``, ``policy_rule_uri``, ``parameters``) pass through;
        ``application="name:version"`` runs a registered application (``command`` may then be
        empty: the application's own runs).
        Raises :class:`InvalidRequestError` naming a bad field."""
        body = submission(
            command,
            gpus=gpus,
            workers=workers,
            queue=queue,
            priority=priority,
            name=name,
            walltime=walltime,
            env=env,
            resources=resources,
            **config,
        )
        answer = await self._rest.call("POST", "/jobs/submit", json=body)
        return str(answer["job_id"])

    async def submit_array(
        self, command: Sequence[str], array: str, **options: Any
    ) -> tuple[str, int]:
        """Submit an array (``array``: ``"0-999%50"``, as ``sbatch --array``), with
        :meth:`submit`'s other arguments: one task per index; its id and number of tasks."""
        body = submission(command, array=array, **options)
        answer = await self._rest.call("POST", "/jobs/submit", json=body)
        return str(answer["array_job_id"]), int(answer["array_tasks"])

    async def array(self, array_job_id: str) -> JobArray:
        """An array as one job: its tasks' states and exit codes."""
        return JobArray.model_validate(await self._rest.call("GET", f"/arrays/{array_job_id}"))

    async def cancel_array(self, array_job_id: str) -> None:
        """Cancel every task of an array that has not ended."""
        await self._rest.call("POST", f"/arrays/{array_job_id}/cancel")

    async def create_job(self, command: Sequence[str], **options: Any) -> Job:
        """Store a job without queueing it (``created``; ``POST /jobs``), with :meth:`submit`'s
        arguments and checks; :meth:`submit_created` queues it (as ``sbatch --hold`` and
        ``scontrol release``; seed 003's create, then submit)."""
        answer = await self._rest.call("POST", "/jobs", json=submission(command, **options))
        return Job.model_validate(answer)

    async def submit_created(self, job_id: str) -> Job:
        """Queue a created job; :class:`ConflictError` for a job in any other status."""
        return Job.model_validate(await self._rest.call("POST", f"/jobs/{job_id}/submit"))

    async def plan(self, command: Sequence[str], **options: Any) -> JobPlan:
        """What :meth:`submit` with the same arguments would do now, without submitting (a dry
        run; ``POST /jobs/plan``): where the job would start, or why it would wait. Refuses
        what submit refuses, with the same errors."""
        answer = await self._rest.call("POST", "/jobs/plan", json=submission(command, **options))
        return JobPlan.model_validate(answer)

    async def priorities(self) -> list[JobPriority]:
        """Waiting jobs in the order they are considered, with their priority factors
        (``GET /priority``, as ``sprio``); those of the key's account (an operator: all)."""
        return [JobPriority.model_validate(p) for p in await self._rest.call("GET", "/priority")]

    async def job(self, job_id: str) -> Job:
        """One job record; :class:`NotFoundError` for an unknown id."""
        return Job.model_validate(await self._rest.call("GET", f"/jobs/{job_id}"))

    async def jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        parent_job_id: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[Job]:
        """Every job (oldest first), fetched a page at a time; only those of ``status``, of
        ``queue``, with every one of ``labels``, of ``parent_job_id``, when given."""
        offset = 0
        while True:
            params: list[tuple[str, str | int]] = [("limit", page_size), ("offset", offset)]
            if status:
                params.append(("status", status))
            if queue:
                params.append(("queue", queue))
            params += [("label", f"{key}={value}") for key, value in (labels or {}).items()]
            if parent_job_id:
                params.append(("parent_job_id", parent_job_id))
            page = await self._rest.call("GET", "/jobs", params=params)
            for raw in page:
                yield Job.model_validate(raw)
            if len(page) < page_size:
                return
            offset += len(page)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        parent_job_id: str | None = None,
    ) -> list[Job]:
        """:meth:`jobs` collected into a list."""
        found = self.jobs(status=status, queue=queue, labels=labels, parent_job_id=parent_job_id)
        return [job async for job in found]

    async def statuses(self, job_id: str) -> list[JobStatusEntry]:
        """The job's status history, oldest first."""
        raw = await self._rest.call("GET", f"/jobs/{job_id}/statuses")
        return [JobStatusEntry.model_validate(entry) for entry in raw]

    async def cancel(self, job_id: str) -> None:
        """Cancel a job (queued: at once; running: the process is stopped)."""
        await self._rest.call("POST", f"/jobs/{job_id}/cancel")

    async def delete_job(self, job_id: str) -> None:
        """Delete a job, cancelling it first if it runs."""
        await self._rest.call("DELETE", f"/jobs/{job_id}")

    async def clean(self, job_id: str) -> str:
        """Remove an ended job's own working directory (its logs and stored outputs stay);
        what was done, in words. :class:`ConflictError` while it runs."""
        answer = await self._rest.call("POST", f"/jobs/{job_id}/clean")
        return str(answer["message"])

    async def set_priority(self, job_id: str, priority: int) -> None:
        """Change a queued job's priority; :class:`ConflictError` once it left the queue."""
        await self._rest.call("POST", f"/jobs/{job_id}/priority", json={"priority": priority})

    async def watch(self, job_id: str, *, poll: float = 0.2) -> AsyncIterator[JobStatusEntry]:
        """Yield each new status-history entry until the job has finished."""
        seen = 0
        while True:
            history = await self.statuses(job_id)
            for entry in history[seen:]:
                yield entry
            seen = len(history)
            if history and history[-1].status in ("completed", "failed", "cancelled"):
                return
            await asyncio.sleep(poll)

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for polling
        *,
        poll: float = 0.2,
    ) -> Job:
        """Wait until the job has finished and return its record. Raises
        :class:`WaitTimeoutError` after ``timeout`` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} is still {job.status} after {timeout:g} s",
                    code="Timeout",
                    details={"job_id": job_id, "status": job.status},
                )
            await asyncio.sleep(poll)

    async def logs(
        self,
        job_id: str,
        *,
        follow: bool = False,
        offset: int = 0,
        poll: float = 0.2,
        worker: int | None = None,
    ) -> AsyncIterator[str]:
        """The job's output (stdout and stderr together) in chunks, read with HTTP Range from
        ``offset``: every worker's, a gang's one after the other, or with ``worker`` that
        worker's own, live while the others run. With ``follow`` it keeps reading until the
        job has finished and the log is complete."""
        params = {} if worker is None else {"worker": str(worker)}
        while True:
            response = await self._rest.send(
                "GET",
                f"/jobs/{job_id}/logs",
                headers={"Range": f"bytes={offset}-"},
                params=params,
            )
            if response.body:
                yield response.text
            offset = int(response.headers.get("X-Log-Offset", offset + len(response.body)))
            complete = response.headers.get("X-Log-Complete", "true") == "true"
            if not follow or (complete and not response.body):
                return
            if not response.body:
                await asyncio.sleep(poll)

    async def explain(self, job_id: str) -> dict[str, Any]:
        """Why the job waits (reason and queue position) or where it was placed (its
        allocation and scheduler id): ``{"job_id", "status", "waiting", "reason",
        "queue_position", "allocation", "scheduler_job_id", "failed_reason"}``."""
        job = await self.job(job_id)
        return {
            "job_id": job.job_id,
            "status": job.status,
            "waiting": job.status == "queued",
            "reason": job.reason.model_dump() if job.reason else None,
            "queue_position": job.queue_position,
            "allocation": job.allocation,
            "scheduler_job_id": job.scheduler_job_id,
            "failed_reason": job.failed_reason,
        }
