"""Find (or start) the real PostgreSQL of ``scripts/postgres_up.sh`` for the tests.

``postgres`` (session) is the server's admin URL, read from the 0600 file the script writes.
When the file is missing and we are root, the script is run (idempotent; the server is left
running; ``scripts/postgres_down.sh`` stops it). Otherwise the tests skip with a message saying
how to get PostgreSQL — except under ``CI=true``, where a missing server fails them instead.

``postgres_db`` is a fresh, empty database of that server for one test, dropped afterwards (with
whatever connections a test left open). ``store_url`` runs a test once on SQLite and once on
PostgreSQL.

``APPORTION_TEST_STORE=postgresql`` puts the test servers of ``tests/conftest.py`` on PostgreSQL:
``server_settings`` gives each data dir a database of its own (:func:`database_for`; a server
restarted on the same data dir finds its database again), dropped after the test
(:func:`drop_made_databases`). ``make test`` runs the server tests that way too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from apportion.store.db import Database
from tests.service_env import missing, run_up_script

STATE = Path(os.environ.get("APPORTION_PG_STATE", "/var/lib/apportion-postgres"))


async def _answers(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


class SecretUrl(str):
    """A URL whose ``repr`` hides its password (hypothesis and pytest print arguments)."""

    def __repr__(self) -> str:
        return repr(re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", str(self)))


@pytest.fixture(scope="session")
def postgres() -> str:
    """The URL (``postgresql://…``) of the tests' PostgreSQL server, as its superuser."""
    url_file = STATE / "url"
    why = None
    if not url_file.exists() or asyncio.run(_answers(url_file.read_text().strip())) is not None:
        why = run_up_script("postgres_up.sh", "postgres")
    if why is None:
        url = url_file.read_text().strip()
        why = asyncio.run(_answers(url))
    if why is not None:
        missing("PostgreSQL", "postgres_up.sh", why)
    return SecretUrl(url)


TEST_STORE = os.environ.get("APPORTION_TEST_STORE", "sqlite")
"""Where the test servers keep their state: ``sqlite`` (the default) or ``postgresql``."""
if TEST_STORE not in ("sqlite", "postgresql"):
    raise RuntimeError(f"APPORTION_TEST_STORE must be sqlite or postgresql, not {TEST_STORE!r}")

_made: dict[Path, str] = {}


def _in_a_thread(coro: Any) -> Any:
    """Run ``coro`` to its end on a loop of its own (callers may be inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect((STATE / "url").read_text().strip())
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def database_for(data_dir: Path) -> str:
    """The PostgreSQL database of the test server with ``data_dir``, made at its first start.
    Its name comes from the data dir's path, so a server the test starts in a subprocess (the
    crash tests) finds the same database."""
    if data_dir not in _made:
        name = "apportion_test_" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        _in_a_thread(_create_if_missing(name))
        _made[data_dir] = database_url((STATE / "url").read_text().strip(), name)
    return _made[data_dir]


async def _create_if_missing(name: str) -> None:
    conn = await asyncpg.connect((STATE / "url").read_text().strip())
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) is None:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # made meanwhile
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def drop_made_databases() -> None:
    """Drop the databases :func:`database_for` made (with connections a test left open)."""
    while _made:
        _, url = _made.popitem()
        name = url.rsplit("/", 1)[1]
        _in_a_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name``."""
    return server_url.rsplit("/", 1)[0] + "/" + name


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database of the server at ``server_url``, dropped (with the
    connections left open to it) when the block ends."""
    name = f"apportion_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def postgres_db(postgres: str) -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    async with fresh_database(postgres) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A test's database: a SQLite file in ``tmp_path``, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("postgres_db")
    return url


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    """The store of ``store_url``: on SQLite, then on PostgreSQL."""
    database = await Database.open(store_url)
    try:
        yield database
    finally:
        await database.close()


class PrivatePostgres:
    """A PostgreSQL server of one test's own (root only: it runs as the user postgres), in a
    temporary directory on a free port of 127.0.0.1, that the test may stop and start again —
    the shared server of ``scripts/postgres_up.sh`` must stay up for the others."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.password = secrets.token_hex(16)
        self.url = f"postgresql://apportion:{self.password}@127.0.0.1:{port}/postgres"

    def _pg(self, *argv: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {(done.stderr or done.stdout).strip()[-600:]}")

    def init(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise RuntimeError(
                "no PostgreSQL server binaries (scripts/postgres_up.sh installs them)"
            )
        self.bin = bins[-1].parent
        self.root.mkdir(mode=0o711)
        shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o400)
        self._pg(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "apportion",
            f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
            )

    def start(self) -> None:
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                 "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        """Stop it now (``-m immediate``: as if it went away), by its postmaster.pid."""
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, stopped and removed after the test."""
    if os.geteuid() != 0:
        message = "not root: a test's own PostgreSQL runs as the user postgres"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outer = Path(tempfile.mkdtemp(prefix="apportion-pg-"))
    outer.chmod(0o711)  # the user postgres enters it
    root = outer / "pg"
    server = PrivatePostgres(root, port)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                server.stop()
        shutil.rmtree(root.parent, ignore_errors=True)
