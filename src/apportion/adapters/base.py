"""The one interface every scheduler adapter implements (submit, poll, cancel, logs, usage, discover).

The job engine calls an adapter after a job's workers are placed and held:

1. ``submit(spec)`` — start every worker of the job; return the backend's job id.
   The engine has already committed its *intent* (the job is ``scheduled`` with a dispatch
   token), and the adapter tags the backend job with ``spec.job_id`` so that
2. ``find(job_id)`` can answer, after a crash, whether the backend has the job (adopt it,
   never submit twice) or not (submit it again).
3. ``poll(scheduler_job_id)`` — the job's state as the backend sees it; called periodically.
4. ``cancel`` — stop it (idempotent: cancelling a finished job is not an error).
5. ``logs`` — the text the job wrote, with an offset for tailing.
6. ``usage`` — resource usage in seed 002's fields.
7. ``discover(cluster)`` — for a Slurm cluster registered without ``nodeData``: its nodes, CPUs,
   memory and GPUs, as ``nodeData`` entries of a cluster document (CONTRACTS §4).

Adapters never take a shell string: ``spec.command`` is an argv list and reaches the job verbatim.
Every method may raise :class:`AdapterError` with a message for the job's status history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class AdapterError(Exception):
    """The backend refused or failed; ``message`` goes into the job's history."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class BackendState(StrEnum):
    PENDING = "pending"  # accepted by the backend, not started
    RUNNING = "running"
    COMPLETED = "completed"  # every worker exited 0
    FAILED = "failed"  # a worker exited non-zero, or the backend failed it
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # the backend has no record of it (anymore)

    @property
    def finished(self) -> bool:
        return self in (BackendState.COMPLETED, BackendState.FAILED, BackendState.CANCELLED)


@dataclass(frozen=True)
class WorkerSpec:
    """One worker of a job, on one node, with its GPUs (indices as strings, CONTRACTS §3)."""

    index: int
    node_id: str
    gpus: tuple[str, ...]
    vcpus: int | None = None
    memory_mb: int | None = None


@dataclass(frozen=True)
class RunAs:
    """The OS identity a job's processes run as (resolved by
    :class:`~apportion.jobs.identity.JobIdentity`; never the server's when it is root)."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # every group of the user (``getgrouplist``), primary included
    home: str


@dataclass(frozen=True)
class JobSpec:
    """Everything an adapter needs to run a job. Built by the engine from the job record."""

    job_id: str
    name: str
    command: tuple[str, ...]  # argv, never a shell string
    cluster_id: str
    scheduler: dict[str, Any]  # the cluster document's config.scheduler (type, partition, …)
    workers: tuple[WorkerSpec, ...]
    output_dir: Path  # where the adapter writes stdout/stderr and its own state
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    walltime_seconds: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    run_as: RunAs | None = None  # None: as the server itself (only when the operator opted in)
    run: int = 0  # how often the job was requeued (preempted) before this run
    image: str | None = None  # the container image, for adapters that run containers

    @property
    def run_id(self) -> str:
        """The name the backend knows this run by, and is tagged with: the job's id, with
        ``.N`` for its run after the N-th requeue (each run is a backend job of its own)."""
        return self.job_id if self.run == 0 else f"{self.job_id}.{self.run}"


@dataclass(frozen=True)
class BackendStatus:
    state: BackendState
    return_code: int | None = None
    reason: str | None = None  # words for the history ("exit code 3 on worker 1")
    started_at: float | None = None  # UNIX seconds
    ended_at: float | None = None
    never_started: bool = False  # it ended without its command ever running (could not start)
    # once it ended: each worker's exit code, in worker order (None: that worker's is unknown);
    # empty when the backend tells none per worker
    exit_codes: tuple[int | None, ...] = ()
    # usage (as :meth:`Adapter.usage` gives it) sampled with this status by an adapter that
    # reads both at once; None: ask :meth:`Adapter.usage` for it
    usage: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LogChunk:
    """A piece of a job's output stream, read from some byte offset."""

    text: str
    offset: int  # pass back to read on from here
    complete: bool  # the job has finished and this is the end
    size: int  # the stream's length in bytes, so far


class Adapter(Protocol):
    """A scheduler backend. Implementations: ``local`` (processes), ``slurm``."""

    name: str

    async def submit(self, spec: JobSpec) -> str:
        """Start the job; return the backend's job id. Tags the job with ``spec.run_id``."""
        ...

    async def find(self, spec: JobSpec) -> str | None:
        """The backend's id of the job tagged ``spec.job_id``, or ``None`` if it never got there."""
        ...

    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus: ...

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """Stop the job (SIGTERM, then SIGKILL after a grace period; ``scancel`` for Slurm)."""
        ...

    async def logs(
        self,
        spec: JobSpec,
        scheduler_job_id: str,
        *,
        offset: int = 0,
        limit: int = 65536,
        worker: int | None = None,
    ) -> LogChunk:
        """The job's output from byte ``offset``: every worker's (``worker`` None), or one
        worker's own stream, which follows live while the others run too. An adapter whose
        backend keeps one stream for the whole job raises :class:`AdapterError` for
        ``worker``."""
        ...

    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields: cpuSeconds, memoryCpuSeconds, instantTotalMemory, maxTotalMemory,
        processIO, processIOWaiting, timeInstant (missing values are None)."""
        ...

    async def partitions(self) -> list[dict[str, Any]]:
        """What ``GET /scheduler/partitions`` shows for this adapter."""
        ...

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        """``nodeData`` entries of the cluster behind ``scheduler`` (Slurm); [] if not supported."""
        ...


@runtime_checkable
class NotifyingAdapter(Protocol):
    """An adapter that says when one of its jobs may have changed (the local adapter: its
    executor tells when a worker ended), so the server looks at that job at once and at the
    others seldom."""

    def on_change(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(run_id)`` on the event loop when the job run ``run_id`` (see
        :attr:`JobSpec.run_id`) may have changed, ``listener(None)`` when any may have."""
        ...


@runtime_checkable
class ClosingAdapter(Protocol):
    """An adapter that holds something open while the server runs (the local adapter: its
    connections to the executors); the server calls :meth:`close` when it stops."""

    async def close(self) -> None: ...


USAGE_FIELDS = (
    "cpuSeconds",
    "memoryCpuSeconds",
    "instantTotalMemory",
    "maxTotalMemory",
    "processIO",
    "processIOWaiting",
)
"""Seed 002's usage fields, as :meth:`Adapter.usage` answers them."""


def usage_document(**known: float | None) -> dict[str, Any]:
    """Seed 002's usage document: the fields ``known`` gives, None for the others, and
    ``timeInstant`` now."""
    unknown = set(known) - set(USAGE_FIELDS)
    if unknown:
        raise ValueError(f"no usage field {sorted(unknown)}")
    return {**dict.fromkeys(USAGE_FIELDS), **known, "timeInstant": time.time()}
