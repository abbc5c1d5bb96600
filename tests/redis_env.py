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
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as redis

REPO = Path(__file__).resolve().parent.parent
UP_SCRIPT = REPO / "scripts" / "redis_up.sh"
STATE = Path(os.environ.get("APPORTION_REDIS_STATE", "/var/lib/apportion-redis"))


def _start() -> str | None:
    """Run redis_up.sh; None on success, else why it could not."""
    if os.geteuid() != 0:
        return "not root: scripts/redis_up.sh runs the server as the user redis"
    try:
        done = subprocess.run(
            ["bash", str(UP_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        return "scripts/redis_up.sh did not finish within 600 s"
    if done.returncode != 0:
        return f"scripts/redis_up.sh failed: {(done.stderr or done.stdout).strip()[-800:]}"
    return None


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
        why = _start()
    if why is None:
        url = url_file.read_text().strip()
        why = asyncio.run(_answers(url))
    if why is not None:
        message = f"no Redis to test against: run scripts/redis_up.sh as root ({why})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return url
