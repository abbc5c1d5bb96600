"""Running ``apportion`` client commands against a test server, as a user types them.

The server runs in the test's event loop, so a command runs in a thread (``CliRunner`` in
``asyncio.to_thread``) with ``APPORTION_URL``/``APPORTION_WS_URL``/``APPORTION_API_KEY`` in its
environment.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from apportion.cli.app import app
from tests.conftest import ADMIN_KEY, Running

runner = CliRunner()


def cli_env(running: Running | None, key: str | None, tmp: Path) -> dict[str, str]:
    """The environment of a command: the server's URLs, the key, no credentials file."""
    env = {"APPORTION_CREDENTIALS": str(tmp / "no-credentials")}
    if running is not None:
        env |= {"APPORTION_URL": running.url, "APPORTION_WS_URL": running.ws_url}
    if key is not None:
        env["APPORTION_API_KEY"] = key
    return env


async def cli(
    running: Running | None, *args: str, key: str | None = ADMIN_KEY, tmp: Path = Path("/tmp")
) -> Result:
    """``apportion *args`` with ``key`` (the admin's unless told)."""
    env = cli_env(running, key, tmp)
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


def ok(result: Result) -> str:
    """The command's stdout; it must have succeeded."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def as_json(result: Result) -> Any:
    """The command's stdout as JSON; it must have succeeded."""
    return json.loads(ok(result))
