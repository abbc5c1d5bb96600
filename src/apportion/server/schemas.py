"""The REST surface's own models: query strings, the bodies the routes validate themselves,
and the shapes of their answers (CONTRACTS §2–§7).

Route modules name these in their declarations (:mod:`apportion.server.routing`); the wrapper
validates queries and bodies with them and ``GET /openapi.json`` describes them. Bodies that a
service validates are declared with the service's own model (``SubmitRequest``,
``QueueConfig``, …), not a copy. Answer models list the fields the contract promises and allow
more (``extra="allow"``): a document carries extensions, and a client must tolerate new fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr

from apportion.errors import ErrorCode
from apportion.files import FileType
from apportion.jobs.applications import ApplicationConfig, RuntimeConfig
from apportion.jobs.models import JobStatus, QueueConfig
from apportion.ownership import DEFAULT_ACCOUNT
from apportion.policies.records import PolicyRecord
from apportion.server.auth import Scope
from apportion.server.events import MAX_LIMIT

MAX_SEQ = 2**63 - 1
MAX_FINISHED = 5000


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- query strings
class JobsQuery(_Query):
    """``GET /jobs``: filters and a page; ``label`` (``key=value``) repeats, and a job must
    have every one."""

    status: JobStatus | None = None
    queue: str | None = None
    label: list[str] = Field(default_factory=list, max_length=32)
    parent_job_id: str | None = Field(None, max_length=32)
    limit: int = Field(100, ge=1, le=10_000)
    offset: int = Field(0, ge=0, le=10**9)


class RuntimeConfigsQuery(_Query):
    """``GET /runtime-configs``: those of one queue, of one application, or every one."""

    queue: str | None = Field(None, max_length=200)
    application: str | None = Field(None, max_length=400)


class LogsQuery(_Query):
    """``GET /jobs/{id}/logs``: one worker's own stream (a gang's workers each have one)."""

    worker: int | None = Field(None, ge=0, le=4096)


class FilesQuery(_Query):
    """``GET /files``: filters and a page."""

    type: FileType | None = None
    job_id: str | None = Field(None, max_length=32)
    limit: int = Field(100, ge=1, le=10_000)
    offset: int = Field(0, ge=0, le=10**9)


class FileUploadQuery(_Query):
    """``POST /files``: what the file is for."""

    type: FileType = FileType.INPUT


class FileLinesQuery(_Query):
    """``GET /files/{id}/lines``: which lines (the first is 0)."""

    start: int = Field(0, ge=0, le=10**9)
    count: int = Field(100, ge=1, le=10_000)


class EventsQuery(_Query):
    """``GET /events``: what a client missed after ``since``; ``type`` repeats or takes a
    comma-separated list."""

    since: int = Field(0, ge=0, le=MAX_SEQ)
    limit: int = Field(1000, ge=1, le=MAX_LIMIT)
    type: list[str] = Field(default_factory=list)


class KeyRevokeQuery(_Query):
    """``DELETE /keys/{key_id}``: the explicit flags a dangerous revoke needs (``true``)."""

    allow_last_admin: bool = False  # revoke the last active admin key (no admin is left)
    allow_self: bool = False  # revoke the key making this request


class DashboardJobsQuery(_Query):
    """``GET /dashboard/jobs``: how many finished jobs to include."""

    finished: int = Field(200, ge=0, le=MAX_FINISHED)


# ---------------------------------------------------------------- bodies the routes validate
class KeyCreate(_Body):
    """``POST /keys``: ``account`` must exist (``POST /accounts``); ``user`` defaults to
    ``name``."""

    name: StrictStr = Field(min_length=1, max_length=200)
    scope: Scope = Scope.SUBMIT
    account: StrictStr = Field(DEFAULT_ACCOUNT, min_length=1, max_length=64)
    user: StrictStr | None = Field(None, min_length=1, max_length=200)


class AccountCreate(_Body):
    """``POST /accounts``: ``os_user`` None runs the account's jobs as the server's
    ``job_user``."""

    name: StrictStr = Field(min_length=1, max_length=64)
    os_user: StrictStr | None = Field(None, min_length=1, max_length=64)
    description: StrictStr = Field("", max_length=1000)
    shares: StrictInt = Field(1, ge=1, le=1_000_000)  # its fair-share weight


class AccountChange(_Body):
    """``PATCH /accounts/{name}``: what changes (today: its fair-share shares)."""

    shares: StrictInt = Field(ge=1, le=1_000_000)


class ManagementCall(_Body):
    """``POST /policies/{uri}/management``: the policy's ``management(action, data)``."""

    action: StrictStr = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)


class OneTimeToken(BaseModel):
    """``POST /auth/one-time``: the token from the sign-in link (checked by the token store;
    anything but the string of a live token is refused with 401)."""

    model_config = ConfigDict(extra="forbid")

    token: Any = Field(None, json_schema_extra={"type": ["string", "null"]})


# ---------------------------------------------------------------- bodies validated elsewhere
class PoolLimits(BaseModel):
    """``PUT /pool/limits`` (validated by :class:`~apportion.jobs.pool_limits.PoolLimits`)."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_jobs: int = Field(ge=1, le=100)


class Document(RootModel[dict[str, Any]]):
    """A JSON object checked by the registry's document rules (docs/registry.md)."""


class FilterQuery(_Body):
    """``POST /clusters/query``: ``query`` is a filter (CONTRACTS §5), checked by the filter
    parser, which names the offending path."""

    query: Any = Field(json_schema_extra={"type": "object"})


class PolicyUploadForm(BaseModel):
    """``POST /policies`` form parts: ``record`` (JSON) and ``code`` (an archive or ``.py``)."""

    record: PolicyRecord
    code: bytes = Field(json_schema_extra={"contentMediaType": "application/octet-stream"})


class FileUploadForm(BaseModel):
    """``POST /files`` form part: ``file``, with its filename (the file's name)."""

    file: bytes = Field(json_schema_extra={"contentMediaType": "application/octet-stream"})


# ---------------------------------------------------------------- answers
class ErrorBody(BaseModel):
    code: ErrorCode
    details: dict[str, Any]


class ErrorEnvelope(BaseModel):
    """Every error: ``{"success": false, "message", "error": {"code", "details"}}``."""

    success: Literal[False]
    message: str
    error: ErrorBody
    request_id: str | None = None


class Ack(_Answer):
    success: Literal[True]


class CleanAnswer(_Answer):
    success: Literal[True]
    message: str  # what was removed, or why nothing was
    cleaned: bool


class Healthz(_Answer):
    status: Literal["ok"]
    version: str
    clusters: int


class AllocationAnswer(_Answer):
    """The allocation protocol's answer (CONTRACTS §2), success or failure."""

    success: bool
    data: Any = None
    request_id: str | None = None
    allocation_id: str | None = None
    explain: dict[str, Any] | None = None
    message: str | None = None
    error: ErrorBody | None = None


class Hold(_Answer):
    allocation_id: str
    policy_rule_uri: str
    request_id: str | None
    placements: list[dict[str, Any]]
    kind: str
    created_at: float
    expires_at: float


class Holds(_Answer):
    success: Literal[True]
    data: list[Hold]


class OneHold(_Answer):
    success: Literal[True]
    data: Hold


class KeyInfo(_Answer):
    key_id: str
    name: str
    scope: Scope
    account: str
    user: str
    created_at: str | None
    last_used_at: str | None
    revoked_at: str | None
    revoked: bool


class Keys(_Answer):
    success: Literal[True]
    data: list[KeyInfo]


class IssuedKey(_Answer):
    key_id: str
    name: str
    scope: Scope
    account: str
    user: str
    api_key: str


class AccountInfo(_Answer):
    name: str
    os_user: str | None
    description: str
    created_at: str | None
    shares: int


class Accounts(_Answer):
    success: Literal[True]
    data: list[AccountInfo]


class OneAccount(_Answer):
    success: Literal[True]
    data: AccountInfo


class KeyIssued(_Answer):
    success: Literal[True]
    data: IssuedKey


class SubmitAnswer(_Answer):
    job_id: str  # of an array: its first task's
    status: JobStatus
    queue_position: int | None
    array_job_id: str | None = None  # an array's id, and how many tasks it has
    array_tasks: int | None = None


class ArrayTask(_Answer):
    task_id: int
    job_id: str
    status: JobStatus
    return_code: int | None
    exit_codes: list[int | None] | None


class ArrayRecord(_Answer):
    """An array, listed as one job: its tasks' states counted, and each task."""

    array_job_id: str
    name: str
    queue: str
    array: str
    limit: int | None
    tasks_total: int
    states: dict[str, int]
    tasks: list[ArrayTask]


class WaitReason(_Answer):
    code: str | None
    message: str


class StoredFile(_Answer):
    """A file as ``GET /files/{id}`` shows it (docs/files.md)."""

    id: str
    name: str
    size: int
    sha512: str
    type: FileType
    account: str
    user: str | None
    created_at: str
    job_id: str | None


class FileLines(_Answer):
    """``GET /files/{id}/lines``: the lines asked for (without their line ends), the first's
    number, and the next line's number, null at the end of the file."""

    lines: list[str]
    start: int
    next: int | None


class JobRecord(_Answer):
    """A job as ``GET /jobs/{id}`` shows it (CONTRACTS §6)."""

    job_id: str
    name: str
    account: str
    user: str | None
    queue: str
    status: JobStatus
    priority: int
    queue_position: int | None
    estimated_start: str | None
    reason: WaitReason | None
    allocation: Any
    scheduler_job_id: str | None
    created_at: str | None
    start_time: str | None
    end_time: str | None
    return_code: int | None
    failed_reason: str | None
    runs: int
    resource_usage: dict[str, Any] | None


class JobPlanAnswer(_Answer):
    """What submitting the job would do now (``POST /jobs/plan``; nothing is stored)."""

    would_start: bool
    queue: str
    priority: int
    queue_position: int
    estimated_start: str | None
    reason: WaitReason
    allocation: Any
    decision: dict[str, Any] | None
    config: dict[str, Any]


class AccountShareLine(_Answer):
    """One account's fair share (``GET /share``, as Slurm's ``sshare``)."""

    account: str
    raw_shares: int
    norm_shares: float
    gpu_seconds: float
    cpu_seconds: float
    effective_usage: float
    fair_share: float


class PriorityLine(_Answer):
    """One waiting job's priority and its factors (``GET /priority``, as Slurm's ``sprio``)."""

    job_id: str
    name: str
    account: str
    user: str | None
    queue: str
    position: int
    priority: float
    weighted: dict[str, float]
    factors: dict[str, float]


class StatusEntry(_Answer):
    status: JobStatus
    time: str | None
    reason: str | None


class QueueRecord(QueueConfig):
    """A queue as stored, with its id (and, when read, its use of its quotas)."""

    model_config = ConfigDict(extra="allow")

    id: int | str
    quota_used: dict[str, Any] | None = None


class ApplicationRecord(ApplicationConfig):
    """An application as stored: its id and number (seed 000's integer id)."""

    model_config = ConfigDict(extra="allow")

    id: str
    number: int


class RuntimeConfigRecord(RuntimeConfig):
    """An application's runtime configuration in a queue, naming both."""

    model_config = ConfigDict(extra="allow")

    queue: str
    application_id: str
    application: str  # name:version


class LimitsAnswer(_Answer):
    success: Literal[True]
    limits: dict[str, Any]


class StoredPolicy(_Answer):
    """A policy record as the store answers it: the record, its URI and source."""

    policy_rule_uri: str
    name: str
    version: str
    release_tag: str
    source: str


class DataAnswer(_Answer):
    """The seed's ``{"success": true, "data": …}``."""

    success: Literal[True]
    data: Any


class Event(_Answer):
    type: str
    seq: int
    ts: str


class EventsPage(_Answer):
    success: Literal[True]
    data: list[Event]
    latest_seq: int
    next_since: int


class SystemStatus(_Answer):
    status: Literal["ok"]
    version: str
    started_at: str
    uptime_seconds: float
    socketio_clients: int
    latest_event_seq: int
    role: Literal["sole", "leader", "follower"]


class Whoami(_Answer):
    key_id: str
    name: str
    scope: Scope
    auth_enabled: bool


class DashboardJobs(_Answer):
    jobs: list[dict[str, Any]]
