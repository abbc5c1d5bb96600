"""Queues and jobs as users send them (CONTRACTS §6; seeds 000, 001, 002, 003).

Validated with pydantic; unknown fields are refused so a typo never silently
changes what a job asks for. Times in records are ISO-8601 UTC on the wire.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from apportion.engine.requests import MAX_REQUESTS
from apportion.errors import InvalidRequest
from apportion.registry.filters import parse_cluster_filter
from apportion.validation import invalid_from_pydantic

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
"""A POSIX environment variable name (letters, digits, ``_``; not starting with a digit)."""

INJECTION_PREFIXES = (
    "LD_",  # the dynamic loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...
    "DYLD_",
    "PYTHON",  # PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONINSPECT, ...
    "PERL5",  # PERL5LIB, PERL5OPT, PERL5DB
    "PERLLIB",
    "RUBY",  # RUBYLIB, RUBYOPT
    "NODE_",  # NODE_OPTIONS, NODE_PATH
    "BASH_FUNC_",  # exported shell functions
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "LUA_INIT",
    "LUA_PATH",
    "LUA_CPATH",
    "MALLOC_",
    "GLIBC_TUNABLES",
)
INJECTION_NAMES = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "GCONV_PATH"}
    | {"LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "TCLLIBPATH", "GEM_PATH"}
    | {"GEM_HOME", "PHPRC", "PHP_INI_SCAN_DIR"}
)
"""Variables that make a loader or an interpreter run code the command did not name
(docs/security.md): refused in a job's ``env`` unless its queue's ``allowed_env`` names them."""


def is_injection_variable(name: str) -> bool:
    """Whether ``name`` is a loader or interpreter injection variable (see above)."""
    return name in INJECTION_NAMES or name.startswith(INJECTION_PREFIXES)


STORED = {"stored": True}
"""Validation context of a record read back from the store: the rules below apply to what is
sent, not to what was accepted before they existed (such a record still loads; its job fails
at dispatch, as it did then)."""


def _stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and info.context.get("stored") is True


MAX_ARG_BYTES = 128 * 1024
"""The longest argument or environment value a job may have: Linux's ``MAX_ARG_STRLEN``
(``execve`` refuses a longer string with E2BIG)."""
MAX_EXEC_BYTES = 1024 * 1024
"""The most a job's command and environment may hold together (each string with its NUL):
well under the kernel's limit of a quarter of the stack rlimit, so ``execve`` takes them."""


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_env(env: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    if _stored(info):
        return env
    for key, value in env.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise ValueError(
                f"environment variable name {key!r} is not a POSIX name: use letters, digits"
                " and '_', not starting with a digit (no '=', spaces or NUL)"
            )
        if "\0" in value:
            raise ValueError(f"the value of environment variable {key} may not contain NUL")
        if _utf8_size(value) > MAX_ARG_BYTES:
            raise ValueError(
                f"the value of environment variable {key} is longer than {MAX_ARG_BYTES} bytes,"
                " which no program can be started with; pass large data in a file"
            )
    return env


def _check_command(command: list[str], info: ValidationInfo) -> list[str]:
    if _stored(info):
        return command
    if not command[0]:
        raise ValueError("the program (the command's first word) is empty; name a program")
    for index, arg in enumerate(command):
        if "\0" in arg:
            raise ValueError(f"argument {index} contains NUL, which no program can be given")
        if _utf8_size(arg) > MAX_ARG_BYTES:
            raise ValueError(
                f"argument {index} is longer than {MAX_ARG_BYTES} bytes, which no program can"
                " be started with; pass large data in a file"
            )
    return command


def _check_dir(value: str | None, info: ValidationInfo) -> str | None:
    if (
        value is not None
        and not _stored(info)
        and (not value.startswith("/") or "\0" in value or "\n" in value)
    ):
        raise ValueError(
            f"working_dir {value!r} must be an absolute path (starting with '/') without NUL"
            " or newline"
        )
    return value


class JobStatus(StrEnum):
    """Seed 001's states: queued → scheduled → running → completed | failed | cancelled."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def active(self) -> bool:
        """Holding resources: scheduled or running."""
        return self in (JobStatus.SCHEDULED, JobStatus.RUNNING)


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WorkerResources(_Strict):
    """Resources of one worker (CONTRACTS §6); they become a built-in policy request."""

    gpus: StrictInt = Field(0, ge=0, le=1024)
    vcpus: StrictInt | None = Field(None, ge=1)
    memory_mb: StrictInt | None = Field(None, ge=1)
    gpu_memory_mb: StrictInt | None = Field(None, ge=1)
    gpu_model: str | list[str] | None = None
    nvlink: StrictBool = False

    def as_request(self) -> dict[str, Any]:
        """The request object of CONTRACTS §3 for this worker."""
        return self.model_dump(exclude_none=True, exclude_defaults=False)


class JobConfig(_Strict):
    """``POST /jobs/submit``'s ``config``."""

    name: str = Field("job", pattern=NAME_PATTERN)
    queue: str = Field("default", pattern=NAME_PATTERN)
    command: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(None, max_length=4096)
    resources: WorkerResources = Field(default_factory=WorkerResources)
    replica_count: StrictInt = Field(1, ge=1, le=MAX_REQUESTS)  # a gang is placed as one decision
    walltime: float | None = Field(None, gt=0, le=30 * 86400)
    labels: dict[str, str] = Field(default_factory=dict)
    policy_rule_uri: str | None = Field(None, max_length=400)
    parameters: dict[str, Any] = Field(default_factory=dict)

    _env = field_validator("env")(_check_env)
    _command = field_validator("command")(_check_command)
    _working_dir = field_validator("working_dir")(_check_dir)

    @model_validator(mode="after")
    def _fits_execve(self, info: ValidationInfo) -> JobConfig:
        if _stored(info):
            return self
        size = sum(_utf8_size(a) + 1 for a in self.command) + sum(
            _utf8_size(k) + _utf8_size(v) + 2 for k, v in self.env.items()
        )
        if size > MAX_EXEC_BYTES:
            raise ValueError(
                f"command and env hold {size} bytes together, over the {MAX_EXEC_BYTES} a job"
                " may start with; pass large data in a file"
            )
        return self


class SubmitRequest(_Strict):
    config: JobConfig
    priority: StrictInt = Field(0, ge=-1_000_000, le=1_000_000)


class PriorityRequest(_Strict):
    priority: StrictInt = Field(ge=-1_000_000, le=1_000_000)


class QueueConfig(BaseModel):
    """A queue (seed 000's fields, plus placement)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    plugin: Literal["local", "slurm"] | None = None  # adapter; default: the chosen cluster's
    working_dir: str | None = None
    default_resources: dict[str, Any] = Field(default_factory=dict)
    maximum_resources: dict[str, Any] = Field(default_factory=dict)
    maximum_allowed_worker_instances: StrictInt = Field(-1, ge=-1)
    maximum_allowed_resources: dict[str, Any] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    storages: list[Any] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    allowed_env: list[str] = Field(default_factory=list)  # injection variables its jobs may set
    policy_rule_uri: str = "binpack:1.0-stable"
    clusters: list[str] | dict[str, Any] = Field(default_factory=list)  # ids, or a filter
    max_bypass: StrictInt = Field(10, ge=0)  # starvation bound, docs/jobs.md

    _env = field_validator("env")(_check_env)
    _working_dir = field_validator("working_dir")(_check_dir)

    @field_validator("clusters")
    @classmethod
    def _clusters_filter(
        cls, clusters: list[str] | dict[str, Any], info: ValidationInfo
    ) -> list[str] | dict[str, Any]:
        """A filter is compiled when the queue is written, not at each admission cycle: a
        malformed one is refused here, naming where in it the mistake is."""
        if isinstance(clusters, dict) and not _stored(info):
            try:
                parse_cluster_filter(clusters, path="clusters")
            except InvalidRequest as exc:
                raise ValueError(
                    f"{exc.message}; clusters is a list of cluster ids or a cluster filter"
                    " (docs/registry.md)"
                ) from None
        return clusters

    @field_validator("allowed_env")
    @classmethod
    def _allowed_env(cls, names: list[str], info: ValidationInfo) -> list[str]:
        for name in [] if _stored(info) else names:
            if not ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"allowed_env entry {name!r} is not a POSIX variable name")
        return names

    @property
    def worker_cap(self) -> int | None:
        cap = self.maximum_allowed_worker_instances
        return None if cap < 0 else cap


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], body: Any, *, prefix: str = "body") -> M:
    """Validate ``body``; :class:`~apportion.errors.InvalidRequest` naming the field otherwise."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, prefix=prefix, allowed=list(model.model_fields)) from None
