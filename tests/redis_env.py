"""Find (or start) the real Redis of ``scripts/redis_up.sh`` for the tests.

``redis_url`` (session) is the server's URL with its password, read from the 0600 file the
script writes. When the file is missing or Redis does not answer and we are root, the script is
run (idempotent; Redis is left running; ``scripts/redis_down.sh`` stops it). Otherwise the tests
skip with a message saying how to get Redis — except under ``CI=true``, where a missing Redis
fails them instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as redis

from tests.service_env import missing, run_up_script

STATE = Path(os.environ.get("APPORTION_REDIS_STATE", "/var/lib/apportion-redis"))


async def _answers(url: str) -> str | None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL (``redis://:password@127.0.0.1:port/0``) of the tests' Redis."""
    url_file = STATE / "url"
    why = None
    if not url_file.exists() or asyncio.run(_answers(url_file.read_text().strip())) is not None:
        why = run_up_script("redis_up.sh", "redis")
    if why is None:
        url = url_file.read_text().strip()
        why = asyncio.run(_answers(url))
    if why is not None:
        missing("Redis", "redis_up.sh", why)
    return url


class PrivateRedis:
    """A Redis server of one test's own, on a free port of 127.0.0.1, that the test may stop and
    start again (the shared one of ``scripts/redis_up.sh`` stays up for the others): a child
    process of the test, ended by its PID. Password in its 0600 config file, nothing persisted."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.password = secrets.token_hex(16)
        self.url = f"redis://:{self.password}@127.0.0.1:{port}/0"
        self.config = root / "redis.conf"
        self.config.write_text(
            f'bind 127.0.0.1\nport {port}\nrequirepass {self.password}\nsave ""\n'
            f"appendonly no\ndir {root}\nlogfile {root / 'redis.log'}\n"
        )
        self.config.chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("no redis-server (scripts/redis_up.sh installs it)")
        self.process = subprocess.Popen([server, str(self.config)])
        why = None
        for _ in range(200):  # blocking: a few tens of milliseconds, from a test or a fixture
            client = sync_redis.Redis.from_url(self.url, socket_timeout=5)
            try:
                client.ping()
                return
            except (OSError, redis.RedisError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            finally:
                client.close()
            time.sleep(0.05)
        raise RuntimeError(f"the test's Redis did not answer: {why}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None


@pytest.fixture
def private_redis(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis` (``redis_url`` first: Redis is installed), stopped after
    the test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = PrivateRedis(tmp_path_factory.mktemp("redis"), port)
    try:
        server.start()
        yield server
    finally:
        server.stop()
