"""The database schema, as SQLAlchemy Core tables.

Documents are stored as JSON text (``Text`` columns holding orjson output) so
that what a user sent is what they read back. Times are UNIX seconds (float)
in the database and ISO-8601 strings on the wire.

Changing a table means adding a migration in :mod:`apportion.store.migrations`.
Migrations create tables from these definitions, so a column added later is declared
here with its table (marked with its version) and its migration adds it only where the
table lacks it: a database created by this code already has it.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

clusters = Table(
    "clusters",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("document", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

cluster_metrics = Table(
    "cluster_metrics",
    metadata,
    Column("cluster_id", String(200), primary_key=True),
    Column("document", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("uri", String(400), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("release_tag", String(100), nullable=False),
    Column("record", Text, nullable=False),
    Column("code_path", Text, nullable=True),
    Column("code_sha256", String(64), nullable=True),
    Column("source", String(20), nullable=False),  # "upload" | "builtin" | "policy_dir"
    Column("created_at", Float, nullable=False),
    # the code as uploaded (version 11): every server sharing the database unpacks it into its
    # own code store; ``code_path`` is the uploading server's copy
    Column("code_filename", Text, nullable=True),
    Column("code_archive", LargeBinary, nullable=True),
)

policy_contexts = Table(
    "policy_contexts",
    metadata,
    Column("uri", String(400), primary_key=True),
    Column("context", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

holds = Table(
    "holds",
    metadata,
    Column("allocation_id", String(64), primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("request_id", String(200), nullable=True),
    Column("policy_uri", String(400), nullable=False),
    Column("placements", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("kind", String(20), nullable=False, server_default="allocation"),
    # version 3: the account the hold belongs to and the user who made it
    Column("account", String(64), nullable=False, server_default="default"),
    Column("user_name", String(200), nullable=True),
)

# One row per held GPU; the unique constraint makes "no GPU in two holds" a
# property of the database, not only of the engine's memory.
hold_gpus = Table(
    "hold_gpus",
    metadata,
    Column(
        "allocation_id",
        String(64),
        ForeignKey("holds.allocation_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("cluster_id", String(200), nullable=False),
    Column("node_id", String(200), nullable=False),
    Column("gpu_id", String(20), nullable=False),
    UniqueConstraint("cluster_id", "node_id", "gpu_id", name="uq_hold_gpus_gpu"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("hash", String(128), nullable=False),
    Column("scopes", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    # version 3: the account the key acts for and the user it names
    Column("account", String(64), nullable=False, server_default="default"),
    Column("user_name", String(200), nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("type", String(100), nullable=False),
    Column("payload", Text, nullable=False),
    Column("ts", Float, nullable=False),
    # version 3: the account the event is about; NULL for fleet-wide events (seen by every key)
    Column("account", String(64), nullable=True),
    sqlite_autoincrement=True,
)

# ---------------------------------------------------------------- version 2: queues and jobs
queues = Table(
    "queues",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("document", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # version 7: a number of its own, never reused (seed 000's integer queue ids)
    Column("seq", Integer, nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False, unique=True),  # submission order (FIFO tie-break)
    Column("queue", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("config", Text, nullable=False),
    Column("owner", String(64), nullable=True),
    Column("allocation", Text, nullable=True),  # placements, once scheduled
    Column("allocation_id", String(64), nullable=True),  # the hold of its GPUs
    Column("adapter", String(20), nullable=True),
    Column("dispatch_token", String(64), nullable=True),  # intent recorded before the backend call
    Column("scheduler_job_id", String(200), nullable=True),
    Column("reason_code", String(64), nullable=True),
    Column("reason", Text, nullable=True),
    Column("bypassed", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("start_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    Column("return_code", Integer, nullable=True),
    Column("failed_reason", Text, nullable=True),
    Column("resource_usage", Text, nullable=True),
    Column("decision", Text, nullable=True),  # the placement's decision record
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    # version 3: the account the job belongs to and the user who submitted it
    Column("account", String(64), nullable=False, server_default="default"),
    Column("user_name", String(200), nullable=True),
    # version 5: preemption — how often it was requeued, and which job is preempting it now
    Column("runs", Integer, nullable=False, server_default="0"),
    Column("preempted_by", Text, nullable=True),
    # version 8: each worker's exit code once it ended (JSON), and whether its files were cleaned
    Column("exit_codes", Text, nullable=True),
    Column("cleaned", Integer, nullable=False, server_default="0"),
    # version 9: the array a job is a task of, and its index in it
    Column("array_job_id", String(64), nullable=True),
    Column("array_task_id", Integer, nullable=True),
)

job_statuses = Table(
    "job_statuses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
    Column("status", String(20), nullable=False),
    Column("time", Float, nullable=False),
    Column("reason", Text, nullable=True),
)

pool_limits = Table(
    "pool_limits",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# ---------------------------------------------------------------- version 3: accounts
accounts = Table(
    "accounts",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("os_user", String(64), nullable=True),  # NULL: the server's job_user
    Column("description", Text, nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    # version 4: its fair-share weight (Slurm's RawShares)
    Column("shares", Integer, nullable=False, server_default="1"),
)

# ---------------------------------------------------------------- version 4: fair share
account_usage = Table(
    "account_usage",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("gpu_seconds", Float, nullable=False),  # of ended jobs, decayed to as_of
    Column("cpu_seconds", Float, nullable=False),
    Column("as_of", Float, nullable=False),
)

# ---------------------------------------------------------------- version 6: files
files = Table(
    "files",
    metadata,
    Column("file_id", String(32), primary_key=True),
    Column("account", String(64), nullable=False),
    Column("user_name", String(64), nullable=True),
    Column("key_id", String(64), nullable=True),
    Column("name", Text, nullable=False),  # as uploaded; the content is stored by id
    Column("size", Integer, nullable=False),
    Column("sha512", String(128), nullable=False),
    Column("type", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("job_id", String(32), nullable=True),  # the job whose output it is
)

# ---------------------------------------------------------------- version 7: applications
applications = Table(
    "applications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("seq", Integer, nullable=False, unique=True),  # never reused: seed 000's integer ids
    Column("name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("name", "version", name="uq_applications_name_version"),
)

# Numbers handed out once each (a queue's, an application's), so that a deleted thing's
# number never names another later.
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

# An application's runtime configuration in one queue (seed 000's app-runtime-config).
app_runtime_configs = Table(
    "app_runtime_configs",
    metadata,
    Column("queue", String(200), nullable=False),
    Column(
        "application_id",
        String(32),
        ForeignKey("applications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("document", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("queue", "application_id", name="uq_app_runtime_configs"),
)

Index("ix_jobs_status", jobs.c.status)
Index("ix_job_statuses_job", job_statuses.c.job_id)
Index("ix_holds_expires_at", holds.c.expires_at)
Index("ix_api_keys_prefix", api_keys.c.prefix)
Index("ix_events_type", events.c.type)
Index("ix_jobs_account", jobs.c.account)
Index("ix_files_account", files.c.account)
Index("ux_queues_seq", queues.c.seq, unique=True)
Index("ix_jobs_array", jobs.c.array_job_id)

# Which of the servers sharing a PostgreSQL database leads, since when, and its term: one row,
# rewritten by each server that takes the lead (store/turns.py; version 10). ``epoch`` grows by
# one with every new leader: the job writer of a server commits only while its term's epoch is
# the row's (the fence of an old leader that has not yet noticed it lost the lead).
leadership = Table(
    "leadership",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("epoch", Integer, nullable=False),
    Column("url", Text, nullable=False),  # where the other servers reach the leader
    Column("since", Float, nullable=False),
)
