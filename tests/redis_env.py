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
from pathlib import Path

import pytest
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
