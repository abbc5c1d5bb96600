"""Job dependencies (issue 13, item 2), as ``sbatch --dependency`` has them: a dependent job
waits saying for what, starts when its dependency holds, and is cancelled with the reason when
it never can. Real server, real local adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.cli_helpers import cli, ok
from tests.conftest import Running
from tests.jobs_helpers import PY, exiting, gated, job, refused, submit, wait_for
from tests.test_accounts import key_session


async def reason_of(running: Running, job_id: str, code: str) -> str:
    """The job's reason once its code is ``code`` (it must become it)."""
    for _ in range(200):
        record = await job(running, job_id)
        if record["reason"] and record["reason"]["code"] == code:
            return str(record["reason"]["message"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never waited with {code}: {record}")


async def test_afterok_waits_saying_for_what_then_starts(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    gate = job_tmp / "gate"
    first = await submit(running, {"command": gated(gate)})
    await wait_for(running, first, "running")
    second = await submit(running, {"command": exiting(0), "dependency": f"afterok:{first[:8]}"})
    record = await job(running, second)
    assert record["config"]["dependency"] == f"afterok:{first}"  # a prefix, named in full
    words = await reason_of(running, second, "Dependency")
    assert words == f"waits for job {first} to complete successfully (afterok); it is running"
    await asyncio.sleep(0.3)  # cycles pass
    # it waits for an end, not for room: no estimate (the free fleet would give it "now")
    assert (await job(running, second))["estimated_start"] is None
    gate.touch()
    await wait_for(running, first, "completed")
    assert (await wait_for(running, second, "completed", "failed"))["status"] == "completed"


async def test_a_dependency_that_can_never_hold_cancels_the_job(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    failing = await submit(running, {"command": exiting(3)})
    await wait_for(running, failing, "failed")
    after_ok = await submit(running, {"command": exiting(0), "dependency": f"afterok:{failing}"})
    record = await wait_for(running, after_ok, "cancelled", "completed")
    assert record["status"] == "cancelled"
    async with running.http.get(f"{running.url}/jobs/{after_ok}/statuses") as response:
        ended = (await response.json())[-1]
    assert ended["reason"] == (
        f"dependency never satisfied: waited for job {failing} to complete successfully"
        " (afterok), and it failed"
    )
    # the other kinds: afternotok and afterany hold on a failure
    for kind in ("afternotok", "afterany"):
        other = await submit(running, {"command": exiting(0), "dependency": f"{kind}:{failing}"})
        assert (await wait_for(running, other, "completed", "cancelled"))["status"] == "completed"
    completing = await submit(running, {"command": exiting(0)})
    await wait_for(running, completing, "completed")
    not_ok = await submit(
        running, {"command": exiting(0), "dependency": f"afternotok:{completing}"}
    )
    assert (await wait_for(running, not_ok, "cancelled", "completed"))["status"] == "cancelled"
    # every term must hold: one that never can cancels it
    both = f"afterany:{completing},afterok:{failing}"
    mixed = await submit(running, {"command": exiting(0), "dependency": both})
    assert (await wait_for(running, mixed, "cancelled", "completed"))["status"] == "cancelled"


async def test_after_needs_a_start_and_singleton_one_at_a_time(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    gate = job_tmp / "gate"
    first = await submit(running, {"command": gated(gate), "name": "nightly"})
    after = await submit(running, {"command": exiting(0), "dependency": f"after:{first}"})
    single = await submit(
        running, {"command": exiting(0), "name": "nightly", "dependency": "singleton"}
    )
    other_name = await submit(
        running, {"command": exiting(0), "name": "daily", "dependency": "singleton"}
    )
    await wait_for(running, first, "running")
    # after: first has started, so it runs while first still runs
    assert (await wait_for(running, after, "completed", "failed"))["status"] == "completed"
    assert (await wait_for(running, other_name, "completed"))["status"] == "completed"
    words = await reason_of(running, single, "Dependency")
    assert words == (
        f"waits for job {first} of the same name and user to end (singleton); it is running"
    )
    gate.touch()
    await wait_for(running, first, "completed")
    assert (await wait_for(running, single, "completed", "failed"))["status"] == "completed"


async def test_a_bad_dependency_is_refused_naming_it(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    mine = await submit(running, {"command": exiting(0)})
    for dependency, words in (
        ("afterbad:1234", "of no known type"),
        ("afterok", "names no job; write afterok:JOBID"),
        ("afterok:", "names no job"),
        ("singleton:1234", "singleton names no job"),
        ("afterok:ffffffffffff", "which is no job of account 'default'"),
    ):
        answer = await refused(running, {"command": exiting(0), "dependency": dependency})
        assert answer["error"]["details"]["path"] == "body.config.dependency", answer
        assert words in answer["message"], answer
    # another account's job is not a job one may depend on (and its existence does not leak)
    async with running.http.post(f"{running.url}/accounts", json={"name": "team-b"}) as r:
        assert r.status == 201
    other = await key_session(running, name="b", scope="submit", account="team-b")
    async with other:
        body = {"config": {"command": exiting(0), "dependency": f"afterok:{mine}"}}
        async with other.post(f"{running.url}/jobs/submit", json=body) as response:
            answer = await response.json()
    assert response.status == 400
    assert "is no job of account 'team-b'" in answer["message"]


async def test_the_cli_submits_with_dependency_and_dry_runs_it(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    gate = job_tmp / "gate"
    first = ok(await cli(running, "submit", "--parsable", "--", *gated(gate))).strip()
    await wait_for(running, first, "running")
    plan = ok(
        await cli(running, "submit", "--dry-run", "-d", f"afterok:{first[:6]}", "--", PY, "-V")
    )
    assert f"waits for job {first} to complete successfully (afterok)" in plan
    assert "[Dependency]" in plan
    second = ok(
        await cli(
            running, "submit", "--parsable", "--dependency", f"afterok:{first}", "--", PY, "-V"
        )
    ).strip()
    await reason_of(running, second, "Dependency")
    explained = ok(await cli(running, "explain", second))
    assert f"waits for job {first} to complete successfully (afterok)" in explained
    assert "reason code     Dependency" in explained
    bad = await cli(running, "submit", "--dependency", "afterwards:1", "--", PY, "-V")
    assert bad.exit_code == 1 and bad.stderr.startswith("apportion: --dependency:")
    gate.touch()
    await wait_for(running, second, "completed")
