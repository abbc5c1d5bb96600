"""Shared fixtures: a real server on 127.0.0.1:0 with a real SQLite store in tmp_path; the real
PostgreSQL of tests/postgres_env.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from apportion import jsonutil
from apportion.app import Server
from apportion.config import Settings
from apportion.demo import demo_clusters
from tests.postgres_env import (  # noqa: F401 (db, postgres, postgres_db, private_postgres, store_url: fixtures)
    TEST_STORE,
    database_for,
    db,
    drop_made_databases,
    postgres,
    postgres_db,
    private_postgres,
    store_url,
)
from tests.redis_env import private_redis, redis_url  # noqa: F401 (fixtures)
from tests.sandbox_env import unsandboxed_unless_jailed

ADMIN_KEY = "test-admin-key-0123456789abcdef"


def server_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: loopback, ephemeral ports, fixed admin key, no credentials file."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "ws_port": 0,
        "data_dir": data_dir,
        "admin_key": ADMIN_KEY,
        "write_credentials": False,
        "sandbox_workers": 1,
        "policy_timeout": 5.0,
        "unsandboxed_policies": unsandboxed_unless_jailed(),
        # as root, jobs run as the job user (scripts/tenant_user.sh); otherwise as this user
        "allow_jobs_as_server_user": os.geteuid() != 0,
    }
    if TEST_STORE == "postgresql":  # APPORTION_TEST_STORE (tests/postgres_env.py)
        values["db"] = database_for(data_dir)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True)
def test_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """Under ``APPORTION_TEST_STORE=postgresql``: PostgreSQL is up (or the test skips, fails
    under CI), and the databases of the test's servers are dropped after it."""
    if TEST_STORE == "postgresql":
        request.getfixturevalue("postgres")
    try:
        yield TEST_STORE
    finally:
        if TEST_STORE == "postgresql":
            drop_made_databases()


@pytest.fixture(autouse=True)
def jobs_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every server of a test — in this process or a subprocess (``APPORTION_JOBS_ROOT``) — keeps
    its jobs' directories in a fresh 0711 directory in ``/tmp`` (the job user enters them; root's
    ``tmp_path`` is closed to it), removed afterwards, instead of the machine's default
    ``/var/lib/apportion/jobs``. A test that names its own ``jobs_root`` setting overrides it;
    one that needs the directory (the Slurm tests) asks for this fixture by name."""
    root = Path(tempfile.mkdtemp(prefix="apportion-test-jobs-"))
    root.chmod(0o711)
    monkeypatch.setenv("APPORTION_JOBS_ROOT", str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def job_tmp() -> Iterator[Path]:
    """A directory a job may read and write by absolute path (markers, gates), which
    ``tmp_path`` is not when the job runs as the job user: ``tmp_path`` is under root's 0700
    ``/tmp/pytest-of-root``. A 0711 directory in ``/tmp`` holding one owned by the job user."""
    outer = Path(tempfile.mkdtemp(prefix="apportion-job-tmp-"))
    try:
        outer.chmod(0o711)
        inner = outer / "job"
        inner.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(inner, "apportion-jobs", "apportion-jobs")
        yield inner
    finally:
        shutil.rmtree(outer, ignore_errors=True)


class Running:
    """A started server with clients bound to it."""

    def __init__(self, server: Server, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    @asynccontextmanager
    async def ws(
        self, key: str | None = ADMIN_KEY, **kwargs: Any
    ) -> AsyncIterator[ClientConnection]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with connect(self.ws_url, additional_headers=headers, **kwargs) as socket:
            yield socket

    async def load_demo_fleet(self) -> list[dict[str, Any]]:
        clusters = demo_clusters()
        for doc in clusters:
            async with self.http.post(f"{self.url}/clusters", json=doc) as response:
                assert response.status == 201, await response.text()
        return clusters


async def ask(socket: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    """Send one message and read one answer."""
    await socket.send(message if isinstance(message, str) else jsonutil.dumps_str(message))
    answer: dict[str, Any] = jsonutil.loads(await socket.recv())
    return answer


def allocation(**fields: Any) -> dict[str, Any]:
    """A seed-004 request with every seed field present."""
    body: dict[str, Any] = {
        "adhoc": True,
        "policy_rule_uri": "binpack:1.0-stable",
        "clusters": [],
        "inputs": {"gpus": 1},
        "filter": {},
        "search": {},
        "parameters": {},
        "settings": {},
    }
    body.update(fields)
    return body


@asynccontextmanager
async def running_server(data_dir: Path, **overrides: Any) -> AsyncIterator[Running]:
    server = Server(server_settings(data_dir, **overrides))
    await server.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            yield Running(server, http)
    finally:
        await server.stop()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(tmp_path / "data") as live:
        yield live


@pytest.fixture
async def fleet(running: Running) -> list[dict[str, Any]]:
    return await running.load_demo_fleet()


ServerFactory = Callable[..., Any]
