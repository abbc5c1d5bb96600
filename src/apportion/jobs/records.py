"""Jobs and queues in memory and in the store.

``JobBook`` keeps every job record in memory (the admission loop reads them
many times a second) and writes every change through to the ``jobs`` and
``job_statuses`` tables before the change is acknowledged. ``QueueBook`` does
the same for queues. Both run on the event loop.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from apportion import jsonutil
from apportion.engine.decisions import Decision, JsonValue, Placement, placements_json
from apportion.errors import Conflict, InvalidRequest, NotFound
from apportion.jobs.fairshare import Decayed, UsageBook
from apportion.jobs.models import STORED, JobConfig, JobStatus, QueueConfig, parse_model
from apportion.jobs.writer import JobWriter
from apportion.ownership import Owner
from apportion.store.db import Database
from apportion.store.repos.jobs import JobChange, JobRepo, JobRow, StatusEntry, UsageRow
from apportion.store.repos.queues import QueueRepo
from apportion.store.turns import Fence
from apportion.timefmt import iso_utc


@dataclass(frozen=True)
class ResourceUsage:
    """A job's resource usage in seed 002's fields (CONTRACTS §6); an unknown value is None.

    Built by the backend driver from what the adapter reports (:meth:`of`); shown and stored
    as :meth:`public`, under seed 002's names."""

    cpu_seconds: float | None = None
    memory_cpu_seconds: float | None = None  # GB × CPU-seconds
    instant_total_memory: float | None = None  # MB
    max_total_memory: float | None = None  # MB
    process_io: float | None = None  # bytes
    process_io_waiting: float | None = None  # seconds
    time_instant: str | float | None = None  # of the sample: ISO-8601, or UNIX seconds (Slurm)

    @classmethod
    def of(cls, document: Mapping[str, object]) -> ResourceUsage:
        """From seed 002's keys (``cpuSeconds``, …); a missing or non-numeric value is None."""

        def number(key: str) -> float | None:
            value = document.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)

        instant = document.get("timeInstant")
        return cls(
            cpu_seconds=number("cpuSeconds"),
            memory_cpu_seconds=number("memoryCpuSeconds"),
            instant_total_memory=number("instantTotalMemory"),
            max_total_memory=number("maxTotalMemory"),
            process_io=number("processIO"),
            process_io_waiting=number("processIOWaiting"),
            time_instant=instant if isinstance(instant, str | float | int) else None,
        )

    def public(self) -> dict[str, float | str | None]:
        """Seed 002's document: ``{"cpuSeconds": …, …, "timeInstant": …}``."""
        return {
            "cpuSeconds": self.cpu_seconds,
            "memoryCpuSeconds": self.memory_cpu_seconds,
            "instantTotalMemory": self.instant_total_memory,
            "maxTotalMemory": self.max_total_memory,
            "processIO": self.process_io,
            "processIOWaiting": self.process_io_waiting,
            "timeInstant": self.time_instant,
        }


@dataclass
class Job:
    """One job's record (the ``jobs`` row, decoded). Read by anyone; changed only by
    :class:`~apportion.jobs.lifecycle.JobLifecycle` (and created by :class:`JobBook`)."""

    job_id: str
    seq: int
    queue: str
    name: str
    status: JobStatus
    priority: int
    config: JobConfig
    owner: Owner  # its account and user; key_id None when the server submitted it
    created_at: float
    allocation: tuple[Placement, ...] | None = None  # one placement per worker, in order
    allocation_id: str | None = None
    adapter: str | None = None
    dispatch_token: str | None = None
    scheduler_job_id: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    bypassed: int = 0
    start_time: float | None = None
    end_time: float | None = None
    return_code: int | None = None
    failed_reason: str | None = None
    resource_usage: ResourceUsage | None = None
    decision: Decision | None = None  # the placement's decision record
    cancel_requested: bool = False
    runs: int = 0  # how often it was preempted and requeued: its backend run is ``.runs``
    preempted_by: str | None = None  # the preemption under way: the preemptor's job id
    exit_codes: tuple[int | None, ...] | None = None  # once it ended, per worker, when known
    cleaned: bool = False  # its own working directory was removed (POST /jobs/{id}/clean)
    array_job_id: str | None = None  # the array it is a task of (jobs/arrays.py)
    array_task_id: int | None = None  # its index in that array
    queue_position: int | None = field(default=None, compare=False)
    estimated_start: float | None = field(default=None, compare=False)  # while it waits
    _encoded_cache: dict[str, tuple[object, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def workers(self) -> int:
        return self.config.replica_count

    def allocation_document(self) -> list[dict[str, JsonValue]] | None:
        """The placements of the job's workers as documents (``GET /jobs/{id}``, the job
        events): the one place that turns them into JSON-ready values."""
        return None if self.allocation is None else placements_json(self.allocation)

    def row(self) -> JobRow:
        """The ``jobs`` row of this record (every field but ``queue_position`` and
        ``estimated_start``, which are recomputed), a snapshot.
        Called on every save: the encoded config and decision are kept, as they do not change
        once set."""
        out = {name: getattr(self, name) for name in _ROW_FIELDS}
        out["owner"] = self.owner.key_id
        out["account"] = self.owner.account
        out["user_name"] = self.owner.user
        out["config"] = self._encoded("config", self.config.model_dump)
        decision = self.decision
        out["decision"] = (
            None if decision is None else self._encoded("decision", decision.to_record)
        )
        if self.allocation is not None:
            out["allocation"] = jsonutil.dumps_str(placements_json(self.allocation))
        if self.resource_usage is not None:
            out["resource_usage"] = jsonutil.dumps_str(self.resource_usage.public())
        out["status"] = self.status.value
        out["cancel_requested"] = int(self.cancel_requested)
        out["cleaned"] = int(self.cleaned)
        if self.exit_codes is not None:
            out["exit_codes"] = jsonutil.dumps_str(list(self.exit_codes))
        return JobRow(**out)

    def drop_encoded(self) -> None:
        """Forget the JSON texts :meth:`row` keeps (they are made again when needed)."""
        self._encoded_cache.clear()

    def _encoded(self, name: str, value: Callable[[], Any]) -> str:
        """The JSON text of a write-once field, computed on first use (keyed by the object, so
        a replaced value is encoded anew)."""
        cached = self._encoded_cache.get(name)
        source = getattr(self, name)
        if cached is None or cached[0] is not source:
            cached = (source, jsonutil.dumps_str(value()))
            self._encoded_cache[name] = cached
        return cached[1]

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        """The record of a stored row (the inverse of :meth:`row`)."""
        data: dict[str, Any] = {name: getattr(row, name) for name in _ROW_FIELDS}
        data["owner"] = Owner(row.account, row.user_name, row.owner)
        data["config"] = JobConfig.model_validate(jsonutil.loads(row.config), context=STORED)
        data["status"] = JobStatus(row.status)
        if row.allocation is not None:
            data["allocation"] = tuple(
                Placement.from_json(p) for p in jsonutil.loads(row.allocation)
            )
        if row.decision is not None:
            data["decision"] = Decision.from_record(jsonutil.loads(row.decision))
        if data["resource_usage"] is not None:
            data["resource_usage"] = ResourceUsage.of(jsonutil.loads(data["resource_usage"]))
        data["cancel_requested"] = bool(row.cancel_requested)
        data["cleaned"] = bool(row.cleaned)
        if row.exit_codes is not None:
            data["exit_codes"] = tuple(jsonutil.loads(row.exit_codes))
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The job as ``GET /jobs/{id}`` shows it (CONTRACTS §6)."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "account": self.owner.account,
            "user": self.owner.user,
            "queue": self.queue,
            "status": self.status.value,
            "priority": self.priority,
            "queue_position": self.queue_position,
            "estimated_start": iso_utc(self.estimated_start),
            "reason": None
            if self.reason is None
            else {"code": self.reason_code, "message": self.reason},
            "allocation": self.allocation_document(),
            "scheduler_job_id": self.scheduler_job_id,
            "adapter": self.adapter,
            "created_at": iso_utc(self.created_at),
            "start_time": iso_utc(self.start_time),
            "end_time": iso_utc(self.end_time),
            "return_code": self.return_code,
            "exit_codes": None if self.exit_codes is None else list(self.exit_codes),
            "cleaned": self.cleaned,
            "array_job_id": self.array_job_id,
            "array_task_id": self.array_task_id,
            "failed_reason": self.failed_reason,
            "runs": self.runs,
            "resource_usage": None if self.resource_usage is None else self.resource_usage.public(),
            "decision": None if self.decision is None else self.decision.to_json(),
            "config": self.config.model_dump(),
        }


_ROW_FIELDS = tuple(
    f.name
    for f in fields(Job)
    if f.name not in ("owner", "queue_position", "estimated_start", "_encoded_cache")
)


MIN_ID_PREFIX = 4
"""The shortest prefix of a job id that names a job (``apportion cancel 3f9a``)."""


def resolve_job(jobs: Mapping[str, Job], given: str, *, visible: Callable[[Job], bool]) -> Job:
    """The job ``given`` names among the ``jobs`` (by id) that ``visible`` says the asker may
    see: its whole id, or (like git and docker) a prefix of at least :data:`MIN_ID_PREFIX`
    characters that only one of them starts with. :class:`NotFound` — the same answer for a
    job the asker may not see, which no prefix matches either — or :class:`InvalidRequest` for
    a prefix several jobs share."""
    job = jobs.get(given)
    if job is not None and visible(job):
        return job
    if len(given) >= MIN_ID_PREFIX:
        found = [j for j in jobs.values() if j.job_id.startswith(given) and visible(j)]
        if len(found) == 1:
            return found[0]
        if found:
            raise InvalidRequest(
                f"job id prefix {given!r} matches {len(found)} jobs; give more of the id",
                path="job_id",
                details={"matches": len(found)},
            )
    raise NotFound(f"no job {given!r}; list jobs with GET /jobs", details={"job_id": given})


class JobBook:
    """Every job, in memory and in the store."""

    def __init__(self, db: Database, *, usage: UsageBook, fence: Fence | None = None) -> None:
        """``usage``: the accounts' fair-share usage, charged here with each job's run when
        its end is recorded (in the same transaction); ``fence``: see :class:`JobWriter`."""
        self._repo = JobRepo(db)
        self._writer = JobWriter(
            db, committed=self._committed, failed=self._not_committed, fence=fence
        )
        self._entering: dict[str, Job] = {}  # new jobs handed over, not committed yet
        self.jobs: dict[str, Job] = {}
        self.unfinished: dict[str, Job] = {}
        """The jobs of :attr:`jobs` not finished yet (created, queued, scheduled, running): what
        admission, the queue's counts and the watch look at, while finished jobs pile up."""
        self.usage = usage
        self._next_seq = 1

    async def load(self) -> None:
        """Read every stored job and the accounts' usage (call once at start)."""
        for row in await self._repo.all():
            job = Job.from_row(row)
            self.jobs[job.job_id] = job
            if not job.status.finished:
                self.unfinished[job.job_id] = job
        self._next_seq = await self._repo.max_seq() + 1
        self.usage.load(
            Decayed(r.account, r.gpu_seconds, r.cpu_seconds, r.as_of)
            for r in await self._repo.usage()
        )

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(
                f"no job {job_id!r}; list jobs with GET /jobs", details={"job_id": job_id}
            )
        return job

    def resolve(self, given: str, *, visible: Callable[[Job], bool]) -> Job:
        """:func:`resolve_job` over this book's jobs."""
        return resolve_job(self.jobs, given, visible=visible)

    async def create(
        self,
        config: JobConfig,
        priority: int,
        owner: Owner,
        reason: str,
        *,
        status: JobStatus = JobStatus.QUEUED,
    ) -> Job:
        """Commit a new job, queued unless ``status`` says otherwise (with its first history
        entry), and return it."""
        job = self.new(config, priority, owner, status=status)
        await self.enter(job, reason)
        return job

    def new(
        self,
        config: JobConfig,
        priority: int,
        owner: Owner,
        *,
        status: JobStatus = JobStatus.QUEUED,
        array: tuple[str, int] | None = None,
    ) -> Job:
        """A new job, numbered after the last (neither stored nor in the book until
        :meth:`enter`); ``array``: the array it is a task of, and its index there."""
        job = self.draft(config, priority, owner)
        job.status = status
        if array is not None:
            job.array_job_id, job.array_task_id = array
        self._next_seq += 1
        return job

    def enter(self, job: Job, reason: str) -> Awaitable[object]:
        """Hand the row of ``job`` (from :meth:`new`) over now, with its first history entry,
        and return what to await for its commit. The job is in the book from its commit on:
        before its caller resumes, and before an event committed with it is emitted."""
        history = StatusEntry(job.job_id, job.status.value, job.created_at, reason)
        self._entering[job.job_id] = job
        return self._writer.write(JobChange(job.row(), history, new=True))

    def _committed(self, changes: Sequence[JobChange]) -> None:
        """Put the new jobs of a committed batch in the book (:meth:`enter`)."""
        for change in changes:
            job = self._entering.pop(change.row.job_id, None) if change.new else None
            if job is not None:
                self.jobs[job.job_id] = job
                self.unfinished[job.job_id] = job

    def _not_committed(self, change: JobChange) -> None:
        if change.new:
            self._entering.pop(change.row.job_id, None)

    def draft(self, config: JobConfig, priority: int, owner: Owner) -> Job:
        """The queued job :meth:`new` would make now, neither stored nor numbered among
        the others (a plan's, ``POST /jobs/plan``)."""
        return Job(
            job_id=uuid.uuid4().hex,
            seq=self._next_seq,
            queue=config.queue,
            name=config.name,
            status=JobStatus.QUEUED,
            priority=priority,
            config=config,
            owner=owner,
            created_at=time.time(),
        )

    def save(
        self,
        job: Job,
        *,
        status: JobStatus | None = None,
        reason: str | None = None,
        release_hold: str | None = None,
        charged: UsageRow | None = None,
    ) -> Awaitable[object]:
        """Write the job's fields; with ``status``, also change it and append to its history;
        with ``release_hold``, delete that hold's rows in the same transaction (a job's end).
        A job's end also charges its run to its account's usage, in that transaction (a
        requeue passes the run it charged, ``charged``: :meth:`charge_run`).
        The change is handed over now, when called; returns what to await: it resolves once
        committed (group-committed with the changes handed over with it,
        :mod:`apportion.store.committer`); a cancelled caller's change is still written."""
        now = time.time()
        history = None
        usage = charged
        if status is not None:
            if status.finished and not job.status.finished and usage is None:
                usage = self.charge_run(job, job.end_time or now)
            job.status = status
            if status.finished:
                self.unfinished.pop(job.job_id, None)
            if status is not JobStatus.QUEUED:
                job.estimated_start = None  # an estimate is of a waiting job
            history = StatusEntry(job.job_id, status.value, now, reason)
        released = () if release_hold is None else (release_hold,)
        change = JobChange(job.row(), history, released_holds=released, account_usage=usage)
        if job.status.finished:
            job.drop_encoded()  # rarely written again: not worth its memory while it is kept
        return self._writer.write(change)

    def charge_run(self, job: Job, end: float) -> UsageRow | None:
        """Charge ``job``'s run, ended at ``end``, to its account's usage (in memory); the
        account's row to store with the change that records the end (None: it never ran)."""
        charged = self.usage.charge(job, end)
        if charged is None:
            return None
        return UsageRow(charged.account, charged.gpu_seconds, charged.cpu_seconds, charged.as_of)

    async def close(self) -> None:
        """Wait for changes handed to the writer (call before the database closes)."""
        await self._writer.close()

    async def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's status history, oldest first, including every change the in-memory
        record already shows (it waits for that job's pending commits)."""
        self.get(job_id)
        await self._writer.settled(job_id)
        return [
            {"status": e.status, "time": iso_utc(e.time), "reason": e.reason}
            for e in await self._repo.history(job_id)
        ]

    async def remove(self, job_id: str) -> None:
        """Delete the job and its history from the store, then from memory."""
        await self._repo.remove(job_id)
        self.jobs.pop(job_id, None)
        self.unfinished.pop(job_id, None)


DEFAULT_QUEUE = "default"


class QueueEntry(NamedTuple):
    """A queue as the book keeps it: its id, its number (seed 000's integer id) and its
    configuration."""

    id: str
    number: int
    config: QueueConfig


class QueueBook:
    """Queues by name, in memory and in the store; a ``default`` queue always exists."""

    def __init__(self, db: Database) -> None:
        self._repo = QueueRepo(db)
        self._queues: dict[str, QueueEntry] = {}

    async def load(self) -> None:
        """Read every stored queue and create ``default`` if missing (call once at start;
        servers starting together on one database may race to create it: one does)."""
        await self._read_all()
        if DEFAULT_QUEUE not in self._queues:
            with contextlib.suppress(Conflict):
                await self.create(
                    {
                        "name": DEFAULT_QUEUE,
                        "description": "the queue jobs go to when they name none",
                    }
                )

    async def _read_all(self) -> None:
        for row in await self._repo.all():
            config = QueueConfig.model_validate(jsonutil.loads(row.document), context=STORED)
            self._queues[row.name] = QueueEntry(row.id, row.number, config)

    def get(self, name: str) -> QueueConfig:
        entry = self._queues.get(name)
        if entry is None:
            raise NotFound(
                f"no queue {name!r}; list queues with GET /queues", details={"queue": name}
            )
        return entry.config

    def entry(self, name: str) -> QueueEntry:
        """The queue named ``name`` with its id and number (:class:`NotFound` otherwise)."""
        self.get(name)
        return self._queues[name]

    def by_id_or_name(self, key: str) -> tuple[str, QueueConfig]:
        for qid, _, config in self._queues.values():
            if key in (qid, config.name):
                return qid, config
        raise NotFound(f"no queue {key!r}; list queues with GET /queues", details={"queue": key})

    def by_number(self, number: int) -> QueueEntry:
        """The queue of seed 000's integer id ``number`` (:class:`NotFound` otherwise)."""
        for entry in self._queues.values():
            if entry.number == number:
                return entry
        raise NotFound(f"no queue {number}", details={"queue": number})

    def public(self, name: str) -> dict[str, Any]:
        qid, _, config = self._queues[name]
        return {"id": qid, **config.model_dump()}

    def names(self) -> list[str]:
        return sorted(self._queues)

    async def create(self, body: Any) -> dict[str, Any]:
        config = parse_model(QueueConfig, body)
        if config.name in self._queues:
            raise Conflict(
                f"queue {config.name!r} exists; change it with PUT /queues",
                details={"queue": config.name},
            )
        row = await self._repo.insert(
            uuid.uuid4().hex[:16], config.name, _document(config), time.time()
        )
        if row is None:  # made meanwhile through another server sharing the database
            await self._read_all()
            raise Conflict(
                f"queue {config.name!r} exists; change it with PUT /queues",
                details={"queue": config.name},
            )
        self._queues[config.name] = QueueEntry(row.id, row.number, config)
        return self.public(config.name)

    async def update(self, body: Any) -> dict[str, Any]:
        config = parse_model(QueueConfig, body)
        entry = self.entry(config.name)
        await self._repo.replace_document(entry.id, _document(config), time.time())
        self._queues[config.name] = entry._replace(config=config)
        return self.public(config.name)

    async def delete(self, key: str, *, in_use: bool) -> None:
        qid, config = self.by_id_or_name(key)
        if config.name == DEFAULT_QUEUE:
            raise InvalidRequest("the default queue cannot be deleted", path="queue")
        if in_use:
            raise Conflict(
                f"queue {config.name!r} has waiting or running jobs; cancel them first",
                details={"queue": config.name},
            )
        await self._repo.delete(qid)
        del self._queues[config.name]


def _document(config: QueueConfig) -> str:
    return jsonutil.dumps_str(config.model_dump())
