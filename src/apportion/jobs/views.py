"""Read-only views over the job records: listing, per-queue counts and ``GET /queue``.

Pure functions over :class:`~apportion.jobs.records.Job` records, called through
:class:`~apportion.jobs.service.JobService` by the REST routes and the Prometheus gauges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from apportion.jobs.models import ACTIVE, JobStatus
from apportion.jobs.quota import QuotaLedger
from apportion.jobs.records import Job, QueueBook


def select_jobs(
    jobs: Iterable[Job],
    *,
    status: str | None,
    queue: str | None,
    labels: Mapping[str, str],
    parent_job_id: str | None,
    limit: int,
    offset: int,
) -> list[Job]:
    """Jobs in submission order — of one status, one queue, with every one of ``labels``, of
    one parent job, when given — one page of them."""
    chosen = sorted(jobs, key=lambda j: j.seq)
    if status is not None:
        chosen = [j for j in chosen if j.status.value == status]
    if queue is not None:
        chosen = [j for j in chosen if j.queue == queue]
    if labels:
        chosen = [j for j in chosen if all(j.config.labels.get(k) == v for k, v in labels.items())]
    if parent_job_id is not None:
        chosen = [j for j in chosen if j.config.parent_job_id == parent_job_id]
    return chosen[offset : offset + limit]


def queue_counts(jobs: Iterable[Job], queues: QueueBook) -> dict[str, tuple[int, int]]:
    """``{queue: (queued, running)}`` for the Prometheus gauges."""
    counts = {name: [0, 0] for name in queues.names()}
    for job in jobs:
        if job.queue in counts and (job.status is JobStatus.QUEUED or job.status.active):
            counts[job.queue][0 if job.status is JobStatus.QUEUED else 1] += 1
    return {name: (q, r) for name, (q, r) in counts.items()}


def statistics(
    jobs: Iterable[Job], queues: QueueBook, limits: dict[str, Any], quota: QuotaLedger
) -> dict[str, Any]:
    """``GET /queue`` (seed 001): totals, per queue and per priority, and the limits; per
    queue also its cohort and its use of its quotas (``quota`` counts the active jobs)."""
    per_queue: dict[str, dict[str, Any]] = {}
    for name in queues.names():
        queue = queues.get(name)
        cap = queue.worker_cap
        per_queue[name] = {
            "queued": 0,
            "running": 0,
            "workers_running": 0,
            "worker_cap": -1 if cap is None else cap,
            # what its active jobs hold, against its maximum_allowed_resources
            "resources_held": {"gpus": 0, "vcpus": 0, "memory_mb": 0},
            "cohort": queue.cohort,
            "quota": quota.status(queue),
        }
    per_priority: dict[str, int] = {}
    queued = running = 0
    for job in jobs:  # one pass: GET /queue is polled, and a pool holds thousands of jobs
        if job.status is JobStatus.QUEUED:
            queued += 1
            per_priority[str(job.priority)] = per_priority.get(str(job.priority), 0) + 1
            if job.queue in per_queue:
                per_queue[job.queue]["queued"] += 1
        elif job.status in ACTIVE:
            running += 1
            line = per_queue.get(job.queue)
            if line is not None:
                workers, asked, held = job.workers, job.config.resources, line["resources_held"]
                line["running"] += 1
                line["workers_running"] += workers
                held["gpus"] += asked.gpus * workers
                held["vcpus"] += (asked.vcpus or 0) * workers
                held["memory_mb"] += (asked.memory_mb or 0) * workers
    return {
        "total_queued": queued,
        "running_jobs": running,
        "queues": per_queue,
        "priorities": per_priority,
        "limits": limits,
    }
