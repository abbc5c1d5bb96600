"""A job that could never start is refused at submit, naming the field (issue 21, items 8, 10).

Before, each of these was accepted with 201 and failed at dispatch (or waited forever, with a
reason about a field the user never sent): a 300-worker job (the engine places a gang of at
most 256 workers as one decision), an empty program name, a NUL in an argument, an environment
value longer than ``execve`` takes, and a command and environment too large together.
"""

from __future__ import annotations

from typing import Any

import pytest

from apportion.jobs.models import MAX_ARG_BYTES, MAX_EXEC_BYTES
from tests.conftest import Running
from tests.jobs_helpers import PY

HUGE = "x" * (MAX_ARG_BYTES + 1)
HALF = "y" * (MAX_ARG_BYTES - 10)


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"command": ["true"], "replica_count": 257}, "body.config.replica_count", "256"),
        ({"command": [""]}, "body.config.command", "empty"),
        ({"command": ["echo", "a\0b"]}, "body.config.command", "NUL"),
        ({"command": ["echo", HUGE]}, "body.config.command", "argument 1 is longer"),
        ({"command": ["true"], "env": {"BIG": HUGE}}, "body.config.env", "BIG is longer"),
        (
            {"command": ["true"], "env": {f"V{i}": HALF for i in range(9)}},
            "body.config",
            f"over the {MAX_EXEC_BYTES}",
        ),
    ],
    ids=["300-workers", "empty-program", "nul-in-argv", "long-arg", "long-env", "too-much"],
)
async def test_a_job_that_could_never_start_is_refused_at_submit(
    running: Running, config: dict[str, Any], path: str, words: str
) -> None:
    async with running.http.post(f"{running.url}/jobs/submit", json={"config": config}) as r:
        answer = await r.json()
        assert r.status == 400, answer
    assert answer["error"]["details"]["path"] == path, answer
    assert words in answer["message"], answer["message"]
    async with running.http.get(f"{running.url}/jobs") as r:
        assert await r.json() == []  # nothing was stored


async def test_the_largest_gang_and_longest_argument_are_still_accepted(running: Running) -> None:
    config = {"command": [PY, "-c", "pass", HALF], "replica_count": 256, "env": {"V": HALF}}
    async with running.http.post(f"{running.url}/jobs/submit", json={"config": config}) as r:
        assert r.status == 201, await r.text()
