"""Typed results of the client (pydantic). Loose on purpose: unknown fields are kept
(``extra="allow"``), so a newer server's extra fields never break an older client.

Built by the clients from the server's JSON; users read them (``job.status``,
``result.placement.gpus``) and may ``model_dump()`` them back to JSON.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINISHED_STATES = frozenset({"completed", "failed", "cancelled"})


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Placement(_Loose):
    """Where one request goes: a cluster, maybe a node and GPU ids (indices as strings)."""

    cluster_id: str
    node_id: str | None = None
    gpus: list[str] = Field(default_factory=list)


class AllocationResult(_Loose):
    """A successful allocation answer. ``placements`` has one entry for a single request and
    one per request for a gang (``inputs.requests``); ``allocation_id`` is set for a hold."""

    placements: list[Placement]
    is_gang: bool = False
    allocation_id: str | None = None
    expires_at: float | None = None
    request_id: str | None = None
    explain: dict[str, Any] | None = None

    @property
    def placement(self) -> Placement:
        """The first (for a single request: the only) placement."""
        return self.placements[0]

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> AllocationResult:
        """Build from the success envelope ``{"success": true, "data": …, …}``."""
        data = answer.get("data")
        is_gang = isinstance(data, list)
        items = data if isinstance(data, list) else [data]
        return cls(
            placements=[Placement.model_validate(item) for item in items],
            is_gang=is_gang,
            allocation_id=answer.get("allocation_id"),
            expires_at=answer.get("expires_at"),
            request_id=answer.get("request_id"),
            explain=answer.get("explain"),
        )


class JobReason(_Loose):
    """Why a job waits (or why it ended): a stable ``code`` and words."""

    code: str | None = None
    message: str | None = None


class Job(_Loose):
    """A job record (``GET /jobs/{id}``, CONTRACTS §6)."""

    job_id: str
    name: str = "job"
    account: str | None = None
    user: str | None = None
    queue: str = "default"
    status: str
    priority: int = 0
    queue_position: int | None = None
    estimated_start: str | None = None  # while it waits: when it is expected to start
    reason: JobReason | None = None
    allocation: list[dict[str, Any]] | None = None
    scheduler_job_id: str | None = None
    adapter: str | None = None
    created_at: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    return_code: int | None = None
    exit_codes: list[int | None] | None = None  # once it ended: each worker's, when known
    cleaned: bool = False  # its own working directory was removed
    failed_reason: str | None = None
    runs: int = 0  # how often it was preempted and requeued
    resource_usage: dict[str, Any] | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.status in FINISHED_STATES


class JobPlan(_Loose):
    """What submitting a job would do now (``plan()``, ``submit --dry-run``): whether the next
    admission cycle would start it, where (``allocation``, one placement per worker) or why it
    would wait (``reason``), its place in its queue and its config as it would be stored (the
    queue's defaults applied)."""

    would_start: bool
    queue: str
    priority: int = 0
    queue_position: int
    estimated_start: str | None = None
    reason: JobReason
    allocation: list[dict[str, Any]] | None = None
    decision: dict[str, Any] | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class JobPriority(_Loose):
    """A waiting job's priority and its factors (``priorities()``, ``apportion priority``;
    Slurm's ``sprio``): ``weighted`` is each factor times its weight, ``factors`` the factors
    themselves (0–1, but ``job``: the job's own priority)."""

    job_id: str
    name: str = "job"
    account: str | None = None
    user: str | None = None
    queue: str = "default"
    position: int
    priority: float
    weighted: dict[str, float] = Field(default_factory=dict)
    factors: dict[str, float] = Field(default_factory=dict)


class JobStatusEntry(_Loose):
    """One step of a job's status history (seed 003)."""

    status: str
    time: str | float | None = None
    reason: str | None = None


class Queue(_Loose):
    """A queue (seed 000's fields plus placement); ``id`` and ``name`` always present."""

    id: str
    name: str
    description: str | None = None
    plugin: str | None = None
    policy_rule_uri: str | None = None


class JobArray(_Loose):
    """An array listed as one job: its tasks' states counted (``states``), and each task
    (``tasks``: ``task_id``, ``job_id``, ``status``, ``return_code``, ``exit_codes``)."""

    array_job_id: str
    name: str
    queue: str
    array: str
    limit: int | None = None
    tasks_total: int
    states: dict[str, int] = Field(default_factory=dict)
    tasks: list[dict[str, Any]] = Field(default_factory=list)


class Application(_Loose):
    """A registered application: ``name:version`` is how a job names it; ``number`` is seed
    000's integer id."""

    id: str
    number: int
    name: str
    version: str
    description: str = ""
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)


class RuntimeConfig(_Loose):
    """How an application runs in a queue."""

    queue: str
    application_id: str
    application: str
    env: dict[str, str] = Field(default_factory=dict)
    default_resources: dict[str, int] = Field(default_factory=dict)
    working_dir: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class Cluster(_Loose):
    """A cluster document (CONTRACTS §4), kept whole; the common fields are typed."""

    id: str
    status: str | None = None
    regionId: str | None = None
    nodes: dict[str, Any] = Field(default_factory=dict)
    gpus: dict[str, Any] = Field(default_factory=dict)

    def node_list(self) -> list[dict[str, Any]]:
        """The nodes of the document (``nodes.nodeData``)."""
        data = self.nodes.get("nodeData")
        return list(data) if isinstance(data, list) else []


class Account(_Loose):
    """An account: a team its keys and jobs belong to, and the OS user its jobs run as
    (``None``: the server's ``job_user``)."""

    name: str
    os_user: str | None = None
    description: str = ""
    created_at: str | None = None
    shares: int = 1


class AccountShare(_Loose):
    """One account's fair share (``fair_share()``, ``apportion share``; Slurm's ``sshare``):
    its shares (raw, and of all), its usage decayed with the server's half-life (GPU- and
    CPU-seconds), its part of all usage and its factor ``2^(-effective_usage/norm_shares)``."""

    account: str
    raw_shares: int
    norm_shares: float
    gpu_seconds: float
    cpu_seconds: float
    effective_usage: float
    fair_share: float


class FileType(StrEnum):
    """What a stored file may be for (the server's own list; the client does not import the
    server)."""

    INPUT = "input"
    TEMPLATE = "template"
    PARAMETER = "parameter"
    SCRIPT = "script"
    OUTPUT = "output"
    CASE = "case"
    TEMPORARY = "temporary"


class StoredFile(_Loose):
    """A stored file (``upload_file()``, ``apportion files``): its id and name, size and
    SHA-512, what it is for (``input``, ``output``…), whose, when, and the job it came from."""

    id: str
    name: str
    size: int
    sha512: str
    type: str
    account: str
    user: str | None = None
    created_at: str | None = None
    job_id: str | None = None


class FileLines(_Loose):
    """Lines of a stored text file: the first's number, and the next's (None at the end)."""

    lines: list[str]
    start: int
    next: int | None = None


class Policy(_Loose):
    """A policy store record with its URI and source (``builtin``, ``policy-dir``, ``upload``)."""

    policy_rule_uri: str
    name: str
    version: str
    release_tag: str
    description: str | None = None
    source: str | None = None


class Event(_Loose):
    """One event (CONTRACTS §7): ``type``, ``seq``, ``ts`` and its payload fields."""

    type: str
    seq: int
    ts: str | float | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The event's own fields (everything but type, seq, ts)."""
        return dict(self.model_extra or {})
