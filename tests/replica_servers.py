"""Servers in processes of their own on one PostgreSQL database (and a Redis), for the tests of
servers sharing a database: :func:`server_processes` starts them and ends them, by their PIDs.
(The database and Redis URLs go to each child on its command line: test credentials of a
test's own database.)"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import ADMIN_KEY, Running

REPO = Path(__file__).resolve().parent.parent

SERVE = """
import asyncio, sys
from pathlib import Path
from apportion.app import Server
from tests.conftest import server_settings

async def main():
    redis_url = sys.argv[3] or None
    server = Server(server_settings(Path(sys.argv[1]), db=sys.argv[2], redis_url=redis_url))
    await server.start()
    print(server.url, server.ws_url, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Remote:
    """What :class:`Running` needs of a server that runs in another process."""

    url: str
    ws_url: str


@dataclass(frozen=True)
class ServerProcess:
    """One server's process and the client bound to it."""

    process: asyncio.subprocess.Process
    running: Running


@asynccontextmanager
async def server_processes(
    tmp_path: Path, db: str, count: int, *, redis_url: str | None = None
) -> AsyncIterator[list[ServerProcess]]:
    """``count`` servers on ``db``, each with its own data dir under ``tmp_path``, started at
    once; terminated (killed after 30 s) when the block ends, unless a test killed them."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        for index in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SERVE, str(tmp_path / f"server-{index}"), db, redis_url or "",
                stdout=asyncio.subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            processes.append(process)
        urls = []
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            urls.append(line.decode().split())
        async with AsyncExitStack() as stack:
            servers = []
            for process, (url, ws_url) in zip(processes, urls, strict=True):
                http = await stack.enter_async_context(
                    aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                )
                servers.append(ServerProcess(process, Running(Remote(url, ws_url), http)))  # type: ignore[arg-type]
            yield servers
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
