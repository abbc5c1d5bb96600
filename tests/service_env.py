"""What the fixtures of the real services the repository's scripts start share
(``tests/postgres_env.py``, ``tests/redis_env.py``): running an ``*_up.sh`` script, and skipping —
or failing, under ``CI=true`` — when a service cannot be had."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_up_script(name: str, runs_as: str) -> str | None:
    """Run ``scripts/<name>`` as root; None once it succeeded, else why it could not."""
    if os.geteuid() != 0:
        return f"not root: scripts/{name} runs the server as the user {runs_as}"
    try:
        done = subprocess.run(
            ["bash", str(SCRIPTS / name)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        return f"scripts/{name} did not finish within 600 s"
    if done.returncode != 0:
        return f"scripts/{name} failed: {(done.stderr or done.stdout).strip()[-800:]}"
    return None


def missing(service: str, script: str, why: str) -> NoReturn:
    """Skip the test for want of ``service`` — fail it under ``CI=true``."""
    message = f"no {service} to test against: run scripts/{script} as root ({why})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)
