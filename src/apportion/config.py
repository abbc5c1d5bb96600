"""Server configuration: flag > environment (``APPORTION_*``) > config file > default.

``Settings`` is built once by the CLI (flags are passed as keyword arguments,
the environment and the TOML file named by ``--config`` / ``APPORTION_CONFIG``
fill the rest) and handed to :func:`apportion.app.run`. Nothing else reads the
environment.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from apportion.files import FilesConfig
from apportion.jobs.priority import SchedulingConfig


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/apportion`` or ``~/.local/share/apportion``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "apportion"


ROOT_JOBS_ROOT = Path("/var/lib/apportion/jobs")
"""The default jobs root of a server that runs as root (docs/security.md)."""


def _installed(module: str) -> bool:
    """Whether ``module`` (an optional dependency) can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


class Settings(BaseSettings):
    """Every option of ``apportion serve`` (CONTRACTS §1)."""

    model_config = SettingsConfigDict(env_prefix="APPORTION_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    ws_port: int = Field(8765, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    db: str | None = None
    # servers sharing one PostgreSQL fan Socket.IO events out through Redis (docs/operations.md);
    # from APPORTION_REDIS_URL or the config file only: it holds a password
    redis_url: str | None = None
    # where the other servers sharing the database reach this one's HTTP port, when it leads
    # (they forward the job routes to it: apportion.server.forwarding); default: the bound URL
    advertise_url: str | None = Field(None, pattern=r"^https?://[^/\s?#]+$")
    config: Path | None = None
    policy_dir: Path | None = None
    policy_dir_poll_seconds: float = Field(2.0, gt=0)
    policy_timeout: float = Field(10.0, gt=0, le=3600)
    admin_key: str | None = Field(None, min_length=16)  # from the environment or a file, never argv
    admin_key_file: Path | None = None  # a file (0600 or stricter) holding the admin key
    auth: bool = True
    credentials_file: Path | None = None
    write_credentials: bool = True

    metrics_ttl: float = Field(60.0, gt=0)
    max_message_bytes: int = Field(1 << 20, ge=1024)
    max_connections: int = Field(1024, ge=1, le=1_000_000)  # open connections per port
    header_timeout_seconds: float = Field(10.0, gt=0, le=3600)  # WebSocket handshake deadline
    idle_timeout_seconds: float = Field(15.0, gt=0, le=86400)  # HTTP: no request under way
    body_timeout_seconds: float = Field(10.0, gt=0, le=3600)  # a request body, plus its size at
    body_min_bytes_per_second: float = Field(64 * 1024, gt=0)  # this rate (docs/security.md)
    max_in_flight_per_connection: int = Field(64, ge=1)
    rate_limit_per_second: float = Field(5000.0, gt=0)
    default_lease_seconds: float = Field(60.0, gt=0)
    max_lease_seconds: float = Field(7 * 86400.0, gt=0)
    sandbox_workers: int = Field(2, ge=1, le=64)  # started at start
    sandbox_max_workers: int = Field(8, ge=1, le=256)  # when several policies' calls overlap
    policy_answer_max_bytes: int = Field(2**20, ge=1024)  # a sandboxed policy's output
    policy_context_max_bytes: int = Field(256 * 2**10, ge=1024)  # the context it may keep
    sandbox_memory_mb: int = Field(1024, ge=64)
    # run uploaded and --policy-dir policies without the bwrap jail (docs/security.md)
    unsandboxed_policies: bool = False
    event_retention_days: float = Field(7.0, gt=0)  # events older than this are pruned
    event_retention_count: int = Field(1_000_000, ge=1)  # and beyond the newest this many
    local_cluster: bool = False  # register this machine as cluster "local" and collect its metrics
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for collectors
    # Jobs and the data dir (docs/security.md): as root, every job runs as job_user; its default
    # working directory is <jobs_root>/<job id>, owned by that user. A server that is not root
    # refuses local jobs unless allow_jobs_as_server_user is set.
    job_user: str = Field("apportion-jobs", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    jobs_root: Path | None = None  # default: /var/lib/apportion/jobs as root, else <data dir>-jobs
    allow_jobs_as_server_user: bool = False
    # the order of waiting jobs and fair share (docs/scheduling.md): the [scheduling] table
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)
    # stored files' limits (docs/files.md): the [files] table
    files: FilesConfig = Field(default_factory=FilesConfig)

    @field_validator(
        "data_dir", "policy_dir", "config", "credentials_file", "jobs_root", "admin_key_file"
    )
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("db")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        """A ``sqlite:///…`` or ``postgresql://…`` URL (the store's :func:`normalise_url`
        says which, never echoing the URL: it may hold a password)."""
        if value is not None:
            from apportion.store.db import normalise_url  # the server's modules, loaded here

            if normalise_url(value).startswith("postgresql") and not _installed("asyncpg"):
                raise ValueError(
                    "a PostgreSQL database needs its driver: pip install 'apportion[postgresql]'"
                )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("use redis://[:password@]host:port/db (or rediss:// for TLS)")
        if value is not None and not _installed("redis"):
            raise ValueError("events through Redis need its client: pip install 'apportion[redis]'")
        return value

    @model_validator(mode="after")
    def _redis_needs_a_shared_database(self) -> Settings:
        if self.redis_url is not None and not self.shared_database:
            raise ValueError(
                "redis_url fans events out to the other servers of one PostgreSQL database: "
                "give db = postgresql://… as well (with SQLite, one server has every client)"
            )
        return self

    @model_validator(mode="after")
    def _admin_key_from_file(self) -> Settings:
        """``admin_key_file`` → ``admin_key``: the file's one line. Refused (``ValueError``)
        when the key is also given another way, when the file is missing, or when others than
        its owner may read it."""
        path = self.admin_key_file
        if path is None:
            return self
        if self.admin_key is not None:
            raise ValueError(
                "admin_key_file and admin_key (APPORTION_ADMIN_KEY) are both given; give one"
            )
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"admin_key_file {path} cannot be read: {exc.strerror}") from None
        if mode & 0o077:
            raise ValueError(
                f"admin_key_file {path} may be read by others (mode {mode & 0o777:o}); "
                f"make it the owner's alone: chmod 600 {path}"
            )
        key = text.strip()
        if len(key) < 16 or "\n" in key:
            raise ValueError(
                f"admin_key_file {path} must hold one key of at least 16 characters on one line"
            )
        self.admin_key = key
        return self

    @property
    def database_url(self) -> str:
        """``--db`` or ``sqlite:///<data dir>/apportion.db``."""
        return self.db or f"sqlite:///{self.data_dir / 'apportion.db'}"

    @property
    def jobs_root_dir(self) -> Path:
        """``jobs_root``; by default :data:`ROOT_JOBS_ROOT` for a root server (its jobs enter
        their directories as the job user, so every directory above must be open to others:
        a root's home is not), else ``<data dir>-jobs`` beside the data dir. Never inside the
        data dir: it is the server's alone."""
        if self.jobs_root is not None:
            return self.jobs_root.absolute()
        if os.geteuid() == 0:
            return ROOT_JOBS_ROOT
        return self.data_dir.with_name(self.data_dir.name + "-jobs").absolute()

    @property
    def shared_database(self) -> bool:
        """Whether other servers may share the database (PostgreSQL; SQLite is one server's)."""
        return (self.db or "").startswith("postgresql")

    @property
    def local_jobs_dir(self) -> Path:
        """Where the ``local`` adapter keeps its jobs' files and its executor listens (0700,
        the server's alone): ``<data dir>/jobs`` for a server alone on its SQLite database;
        ``<jobs root>/.local`` with PostgreSQL, so that the servers of one host sharing the
        database and the jobs root share it too — the leader that takes over finds the jobs
        the previous one started (docs/operations.md)."""
        if self.shared_database:
            return self.jobs_root_dir / ".local"
        return self.data_dir / "jobs"

    @property
    def files_dir(self) -> Path:
        """Where stored files' contents are kept (0700, the server's alone): ``<data dir>/files``
        alone on SQLite; ``<jobs root>/.files`` with PostgreSQL, shared by the servers sharing
        the database, as the jobs root is (docs/operations.md)."""
        if self.shared_database:
            return self.jobs_root_dir / ".files"
        return self.data_dir / "files"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_from(init_settings)
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _config_file_from(init_settings: PydanticBaseSettingsSource) -> Path | None:
    given: Any = init_settings().get("config") or os.environ.get("APPORTION_CONFIG")
    if not given:
        return None
    path = Path(given).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} does not exist (from --config/APPORTION_CONFIG)"
        )
    return path
