"""Queues and jobs as users send them (CONTRACTS §6; seeds 000, 001, 002, 003).

Validated with pydantic; unknown fields are refused so a typo never silently
changes what a job asks for. Times in records are ISO-8601 UTC on the wire.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from apportion.engine.requests import MAX_REQUESTS
from apportion.errors import InvalidRequest
from apportion.registry.filters import parse_cluster_filter
from apportion.validation import invalid_from_pydantic

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
APPLICATION_REFERENCE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(:[A-Za-z0-9][A-Za-z0-9._+-]{0,99})?$"
"""How a job names an application: ``name:version``, or ``name`` (of an application with one
version); see :mod:`apportion.jobs.applications`."""
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


def check_env(env: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    """An ``env`` field's validator: POSIX names, no NUL, values a program can start with."""
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


def check_command(command: list[str], info: ValidationInfo) -> list[str]:
    """A ``command`` field's validator: a named program; arguments ``execve`` can take."""
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


def check_dir(value: str | None, info: ValidationInfo) -> str | None:
    """A ``working_dir`` field's validator: an absolute path without NUL or newline."""
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
    """Seed 001's states: queued → scheduled → running → completed | failed | cancelled; and
    ``created``, a job stored but not yet submitted (seed 003's create, then submit)."""

    CREATED = "created"
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
        return self in ACTIVE


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.SCHEDULED, JobStatus.RUNNING})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


MAX_WORKER_GPUS = 1024
"""The most GPUs one worker of a job may ask for."""

MAX_WALLTIME = 30 * 86400.0
"""The longest walltime a job or a queue may name (seconds)."""


class WorkerResources(_Strict):
    """Resources of one worker (CONTRACTS §6); they become a built-in policy request."""

    gpus: StrictInt = Field(0, ge=0, le=MAX_WORKER_GPUS)
    vcpus: StrictInt | None = Field(None, ge=1)
    memory_mb: StrictInt | None = Field(None, ge=1)
    gpu_memory_mb: StrictInt | None = Field(None, ge=1)
    gpu_model: str | list[str] | None = None
    nvlink: StrictBool = False

    def as_request(self) -> dict[str, Any]:
        """The request object of CONTRACTS §3 for this worker."""
        return self.model_dump(exclude_none=True, exclude_defaults=False)


class InputFile(_Strict):
    """A stored file to put in the job's working directory before it starts (docs/files.md):
    its id, and whether to extract it (a ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``,
    ``.tar.xz`` or ``.zip``) instead of copying it."""

    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    decompress: StrictBool = False


MAX_INPUT_FILES = 100
MAX_OUTPUT_PATTERNS = 100


def _check_output_patterns(patterns: list[str]) -> list[str]:
    """Output patterns are relative to the working directory: not absolute, no ``..``."""
    for pattern in patterns:
        parts = pattern.replace("\\", "/").split("/")
        if not pattern.strip() or pattern.startswith("/") or ".." in parts or len(pattern) > 1024:
            raise ValueError(
                f"{pattern[:100]!r} must be a glob pattern relative to the working directory"
                " (such as 'results/*.csv' or '**/*.log'), without '..'"
            )
    return patterns


class JobConfig(_Strict):
    """``POST /jobs/submit``'s ``config``."""

    name: str = Field("job", pattern=NAME_PATTERN)
    queue: str = Field("default", pattern=NAME_PATTERN)
    # an application (docs/jobs.md, "Applications"): "name:version", or a name of one version
    application: str | None = Field(None, pattern=APPLICATION_REFERENCE)
    # empty only with an application, whose command it then runs
    command: list[str] = Field(default_factory=list, max_length=4096, validate_default=True)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(None, max_length=4096)
    resources: WorkerResources = Field(default_factory=WorkerResources)
    replica_count: StrictInt = Field(1, ge=1, le=MAX_REQUESTS)  # a gang is placed as one decision
    walltime: float | None = Field(None, gt=0, le=MAX_WALLTIME)  # seconds; stopped after it
    labels: dict[str, str] = Field(default_factory=dict)
    policy_rule_uri: str | None = Field(None, max_length=400)
    parameters: dict[str, Any] = Field(default_factory=dict)
    input_files: list[InputFile] = Field(default_factory=list, max_length=MAX_INPUT_FILES)
    parent_job_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")  # seed 000's; filterable
    # glob patterns relative to the working directory; matching files are stored at the end
    output_files: list[str] = Field(default_factory=list, max_length=MAX_OUTPUT_PATTERNS)
    auto_clean: StrictBool = False  # seed 000's: its own working directory removed at its end
    # its whole output (the log) stored as the output file process_output.log when it ends
    keep_log: StrictBool = False
    # sbatch --dependency's terms (jobs/dependencies.py): afterok:ID[:ID…],afterany:…,singleton
    dependency: str | None = Field(None, min_length=1, max_length=64 * 1024)
    # sbatch --array's indices (jobs/arrays.py): "0-999%50" — one task per index
    array: str | None = Field(None, min_length=1, max_length=4096)
    # the container image, for adapters that run containers (kubernetes); the others run the
    # command on the node as it is (docs/adapters.md)
    image: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^[^\s]+$")

    _env = field_validator("env")(check_env)
    _working_dir = field_validator("working_dir")(check_dir)
    _output_files = field_validator("output_files")(_check_output_patterns)

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str], info: ValidationInfo) -> list[str]:
        if command:
            return check_command(command, info)
        if info.data.get("application") is None and not _stored(info):
            raise ValueError(
                "give the command to run (the program, then its arguments), or name an"
                " application that has one"
            )
        return command

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


SEED_RESOURCE_NAMES = {"cpu": "vcpus", "memory_gb": "memory_mb (in MiB)"}
"""Seed 000's names for a queue's resources, refused with the name Apportion uses."""


class ResourceAmounts(_Strict):
    """Amounts of a queue's ``default_resources`` and ``maximum_resources`` (per worker of a
    job) and ``maximum_allowed_resources`` (the total of the queue's running jobs), in the
    job's ``config.resources`` names (docs/jobs.md, "Queue limits"). An unset amount is no
    default, or no limit."""

    gpus: StrictInt | None = Field(None, ge=0)
    vcpus: StrictInt | None = Field(None, ge=1)
    memory_mb: StrictInt | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        if _stored(info):  # accepted before these names were checked: unknown ones are ignored
            return {k: v for k, v in data.items() if k in cls.model_fields}
        for seed_name, name in SEED_RESOURCE_NAMES.items():
            if seed_name in data:
                raise ValueError(f"{seed_name!r} is seed 000's name; Apportion's is {name}")
        return data

    @model_serializer(mode="wrap")
    def _set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    def amounts(self) -> dict[str, int]:
        """The amounts that are set, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ResourceQuota(_Strict):
    """A queue's quota of one resource (Kueue's ``nominalQuota``, ``borrowingLimit`` and
    ``lendingLimit``): ``nominal`` is its own; in a cohort it may use up to
    ``borrowing_limit`` more of what the others leave unused (unset: as much as they lend), and
    lends up to ``lending_limit`` of its own unused nominal (unset: all of it)."""

    nominal: StrictInt = Field(ge=0)
    borrowing_limit: StrictInt | None = Field(None, ge=0)
    lending_limit: StrictInt | None = Field(None, ge=0)

    @model_serializer(mode="wrap")
    def _set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @model_validator(mode="after")
    def _lends_what_it_has(self) -> ResourceQuota:
        if self.lending_limit is not None and self.lending_limit > self.nominal:
            raise ValueError(
                f"lending_limit {self.lending_limit} is more than nominal {self.nominal}: a"
                " queue lends only its own quota"
            )
        return self


GPU_MODEL_GLOB_CHARS = frozenset("*?[]")


class QueueQuota(_Strict):
    """A queue's quotas (docs/scheduling.md): GPUs per GPU model (each key a model name as the
    registry has it, e.g. ``"H100"``), vCPUs and memory (MiB) of its scheduled and running
    jobs. A GPU model that is not a key cannot be used by the queue's jobs; an unset vCPU or
    memory quota does not limit."""

    gpus: dict[str, ResourceQuota] = Field(default_factory=dict)
    vcpus: ResourceQuota | None = None
    memory_mb: ResourceQuota | None = None

    @model_serializer(mode="wrap")
    def _set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @field_validator("gpus")
    @classmethod
    def _model_names(cls, gpus: dict[str, ResourceQuota]) -> dict[str, ResourceQuota]:
        for model in gpus:
            if not model or GPU_MODEL_GLOB_CHARS & set(model):
                raise ValueError(
                    f"GPU model {model!r} is not a model name: name each model as the registry"
                    " has it (apportion nodes shows them), without wildcards"
                )
        return gpus


def worker_amounts(resources: WorkerResources) -> dict[str, int]:
    """What one worker asks for, in :class:`ResourceAmounts`' names (unset ones left out)."""
    asked = {"gpus": resources.gpus, "vcpus": resources.vcpus, "memory_mb": resources.memory_mb}
    return {k: v for k, v in asked.items() if v is not None}


class QueueConfig(BaseModel):
    """A queue (seed 000's fields, plus placement)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    # the scheduler adapter (GET /plugins lists them); default: the chosen cluster's
    plugin: str | None = Field(None, pattern=NAME_PATTERN)
    working_dir: str | None = None
    default_resources: ResourceAmounts = Field(default_factory=ResourceAmounts)
    maximum_resources: ResourceAmounts = Field(default_factory=ResourceAmounts)
    maximum_allowed_worker_instances: StrictInt = Field(-1, ge=-1)
    maximum_allowed_resources: ResourceAmounts = Field(default_factory=ResourceAmounts)
    attributes: dict[str, Any] = Field(default_factory=dict)
    storages: list[Any] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    allowed_env: list[str] = Field(default_factory=list)  # injection variables its jobs may set
    policy_rule_uri: str = "binpack:1.0-stable"
    clusters: list[str] | dict[str, Any] = Field(default_factory=list)  # ids, or a filter
    max_bypass: StrictInt = Field(10, ge=0)  # starvation bound, docs/jobs.md
    default_walltime: float | None = Field(None, gt=0, le=MAX_WALLTIME)  # for jobs naming none
    maximum_walltime: float | None = Field(None, gt=0, le=MAX_WALLTIME)  # the most one may ask
    priority_factor: StrictInt = Field(0, ge=0, le=1_000_000)  # the queue factor's weight
    # a waiting job may stop running jobs of lower priority of this queue (docs/scheduling.md)
    preempt_lower_priority: StrictBool = False
    # it may stop jobs of its cohort that borrowed the quota it lent (docs/scheduling.md)
    reclaim_within_cohort: StrictBool = False
    quota: QueueQuota | None = None  # docs/scheduling.md; unset: no quota
    cohort: str | None = Field(None, pattern=NAME_PATTERN)  # queues that lend to each other

    _env = field_validator("env")(check_env)
    _working_dir = field_validator("working_dir")(check_dir)

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

    @model_validator(mode="after")
    def _worker_sized(self, info: ValidationInfo) -> QueueConfig:
        """Per-worker amounts a worker may have (a default above the maximum would be refused
        to every job that takes it)."""
        if _stored(info):
            return self
        for field in ("default_resources", "maximum_resources"):
            gpus = getattr(self, field).gpus
            if gpus is not None and gpus > MAX_WORKER_GPUS:
                raise ValueError(
                    f"{field}.gpus {gpus} is more than a worker may have ({MAX_WORKER_GPUS})"
                )
        if (
            self.default_walltime is not None
            and self.maximum_walltime is not None
            and self.default_walltime > self.maximum_walltime
        ):
            raise ValueError(
                f"default_walltime {self.default_walltime:g} is more than maximum_walltime"
                f" {self.maximum_walltime:g}"
            )
        default, maximum = self.default_resources.amounts(), self.maximum_resources.amounts()
        for name, amount in default.items():
            if name in maximum and amount > maximum[name]:
                raise ValueError(
                    f"default_resources.{name} {amount} is more than maximum_resources.{name}"
                    f" {maximum[name]}"
                )
        return self

    @model_validator(mode="after")
    def _cohort_has_quota(self, info: ValidationInfo) -> QueueConfig:
        """A cohort lends and borrows quota: a queue in one needs a quota, and a borrowing or
        lending limit needs a cohort to mean something."""
        if _stored(info):
            return self
        if self.reclaim_within_cohort and self.cohort is None:
            raise ValueError(
                "reclaim_within_cohort takes back quota lent to the queue's cohort, and the"
                " queue is in none; set cohort (and quota)"
            )
        if self.cohort is not None and self.quota is None:
            raise ValueError(
                f"cohort {self.cohort!r} needs a quota: queues of a cohort lend and borrow"
                " their quotas; set quota"
            )
        if self.cohort is None and self.quota is not None:
            limits: list[tuple[str, ResourceQuota | None]] = [
                ("gpus." + m, q) for m, q in self.quota.gpus.items()
            ]
            limits += [("vcpus", self.quota.vcpus), ("memory_mb", self.quota.memory_mb)]
            for name, quota in limits:
                if quota is not None and (
                    quota.borrowing_limit is not None or quota.lending_limit is not None
                ):
                    raise ValueError(
                        f"quota.{name} has a borrowing or lending limit but the queue is in no"
                        " cohort; set cohort, or remove the limit"
                    )
        return self

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
