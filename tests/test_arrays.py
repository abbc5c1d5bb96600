"""Job arrays (issue 13, item 1), as ``sbatch --array`` has them: one submission, a task per
index that knows its index, at most ``%K`` running at once, listed as one job with each task's
state and exit code, cancelled as one. Real server, real local adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.cli_helpers import as_json, cli, ok
from tests.conftest import Running
from tests.jobs_helpers import PY, refused
from tests.test_accounts import key_session


async def submit_array(running: Running, config: dict[str, Any]) -> dict[str, Any]:
    async with running.http.post(f"{running.url}/jobs/submit", json={"config": config}) as r:
        answer: dict[str, Any] = await r.json()
        assert r.status == 201, answer
    return answer


async def array_of(running: Running, array_job_id: str) -> dict[str, Any]:
    async with running.http.get(f"{running.url}/arrays/{array_job_id}") as response:
        found: dict[str, Any] = await response.json()
        assert response.status == 200, found
    return found


async def until_states(
    running: Running, array_job_id: str, wanted: dict[str, int]
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for _ in range(600):
        found = await array_of(running, array_job_id)
        if found["states"] == wanted:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"array {array_job_id} never reached {wanted}: {found['states']}")


def gated_task(gate: Path) -> list[str]:
    """A task that prints its index (both names), then waits for ``gate``."""
    code = (
        "import os, time\n"
        "print(os.environ['APPORTION_ARRAY_TASK_ID'], os.environ['SLURM_ARRAY_TASK_ID'],"
        " os.environ['APPORTION_ARRAY_TASK_COUNT'], flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    )
    return [PY, "-c", code]


async def test_an_array_runs_a_task_per_index_at_most_k_at_once(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    gate = job_tmp / "gate"
    answer = await submit_array(running, {"command": gated_task(gate), "array": "0-4,10%2"})
    array_job_id = answer["array_job_id"]
    assert answer["array_tasks"] == 6 and answer["status"] == "queued"
    found = await until_states(running, array_job_id, {"running": 2, "queued": 4})
    assert [t["task_id"] for t in found["tasks"]] == [0, 1, 2, 3, 4, 10]
    assert (found["limit"], found["tasks_total"], found["array"]) == (2, 6, "0-4,10%2")
    waiting = next(t for t in found["tasks"] if t["status"] == "queued")
    async with running.http.get(f"{running.url}/jobs/{waiting['job_id']}") as response:
        reason = (await response.json())["reason"]
    assert reason["code"] == "ArrayTaskLimit"
    assert (
        "2 of its tasks may be scheduled or running at once (%2), and they are" in reason["message"]
    )
    await asyncio.sleep(0.5)  # cycles pass: never a third
    assert (await array_of(running, array_job_id))["states"] == {"running": 2, "queued": 4}
    gate.touch()
    done = await until_states(running, array_job_id, {"completed": 6})
    for task in done["tasks"]:
        assert task["return_code"] == 0 and task["exit_codes"] == [0]
        async with running.http.get(f"{running.url}/jobs/{task['job_id']}/logs") as response:
            index = str(task["task_id"])
            assert (await response.text()).split() == [index, index, "6"]
        async with running.http.get(f"{running.url}/jobs/{task['job_id']}") as response:
            record = await response.json()
        assert (record["array_job_id"], record["array_task_id"]) == (array_job_id, task["task_id"])


async def test_each_tasks_exit_code_and_cancelling_the_array(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    exits = [PY, "-c", "import os, sys; sys.exit(int(os.environ['APPORTION_ARRAY_TASK_ID']))"]
    answer = await submit_array(running, {"command": exits, "array": "0-4:2"})
    found = await until_states(running, answer["array_job_id"], {"completed": 1, "failed": 2})
    assert [(t["task_id"], t["return_code"]) for t in found["tasks"]] == [(0, 0), (2, 2), (4, 4)]

    gate = job_tmp / "never"
    waiting = await submit_array(running, {"command": gated_task(gate), "array": "0-3%1"})
    await until_states(running, waiting["array_job_id"], {"running": 1, "queued": 3})
    async with running.http.post(f"{running.url}/arrays/{waiting['array_job_id']}/cancel") as r:
        assert r.status == 200
    await until_states(running, waiting["array_job_id"], {"cancelled": 4})


async def test_what_an_array_refuses_and_who_sees_it(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    for spec, words in (
        ("0-", "is no index or range"),
        ("5-1", "must go up from its first index"),
        ("0-9%0", "after % comes the most tasks"),
        ("0-20000", "more than 10000 tasks"),
        ("a", "is no index or range"),
    ):
        answer = await refused(running, {"command": [PY, "-V"], "array": spec})
        assert answer["error"]["details"]["path"] == "body.config.array", answer
        assert words in answer["message"], answer
    body = {"config": {"command": [PY, "-V"], "array": "0-1"}}
    async with running.http.post(f"{running.url}/jobs", json=body) as response:
        answer = await response.json()
    assert response.status == 400 and "POST /jobs/submit" in answer["message"]
    mine = await submit_array(running, {"command": [PY, "-V"], "array": "0-1"})
    async with running.http.post(f"{running.url}/accounts", json={"name": "team-b"}) as r:
        assert r.status == 201
    other = await key_session(running, name="b", scope="submit", account="team-b")
    async with other:
        async with other.get(f"{running.url}/arrays/{mine['array_job_id']}") as response:
            assert response.status == 404
        async with other.post(f"{running.url}/arrays/{mine['array_job_id']}/cancel") as r:
            assert r.status == 404


async def test_the_cli_submits_shows_and_cancels_an_array(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    gate = job_tmp / "gate"
    said = ok(await cli(running, "submit", "--array", "1-3%1", "--", *gated_task(gate)))
    assert said.startswith("Submitted array job ") and said.strip().endswith("(3 tasks)")
    array_job_id = said.split()[3]
    await until_states(running, array_job_id, {"running": 1, "queued": 2})
    shown = ok(await cli(running, "array", array_job_id))
    assert "3 tasks, at most 1 at once: 2 queued, 1 running" in shown
    assert as_json(await cli(running, "array", array_job_id, "-o", "json"))["tasks_total"] == 3
    said = ok(await cli(running, "cancel", array_job_id))
    assert said.strip() == f"Cancelled array job {array_job_id}"
    await until_states(running, array_job_id, {"cancelled": 3})
    refused_flags = await cli(running, "submit", "--array", "0-1", "--wait", "--", PY, "-V")
    assert refused_flags.exit_code == 2 and "--array" in refused_flags.stderr
    bad = await cli(running, "submit", "--array", "x", "--", PY, "-V")
    assert bad.exit_code == 1 and bad.stderr.startswith("apportion: --array:")
