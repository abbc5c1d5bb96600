"""A dry run of submit: ``POST /jobs/plan`` and ``apportion submit --dry-run`` (issue 10, item 1).

As ``nomad job plan`` and ``sbatch --test-only``: the same checks as a submit, then where the job
would start now or why it would wait — and nothing stored, reserved or announced. Real server,
real local adapter, the demo fleet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli_helpers import cli, ok
from tests.conftest import Running
from tests.jobs_helpers import (
    LIMITED_QUEUE,
    create_queue,
    gated,
    submit,
    until_reason,
    wait_for,
)


async def plan(running: Running, config: dict[str, Any], priority: int = 0) -> dict[str, Any]:
    body = {"config": config, "priority": priority}
    async with running.http.post(f"{running.url}/jobs/plan", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
    return answer


async def test_a_plan_places_the_job_where_its_submit_then_goes(
    running: Running, fleet: Any
) -> None:
    config = {"command": ["true"], "replica_count": 2, "resources": {"gpus": 4}}
    first = await plan(running, config)
    assert first["would_start"] is True, first
    assert first["reason"]["code"] is None
    assert first["reason"]["message"].startswith("would start now on ")
    assert [len(p["gpus"]) for p in first["allocation"]] == [4, 4]
    assert len({p["cluster_id"] for p in first["allocation"]}) == 1  # a gang: one cluster
    assert first["queue"] == "default" and first["queue_position"] == 1
    # nothing was stored or reserved: no job, and a second plan finds the same GPUs free
    async with running.http.get(f"{running.url}/jobs") as r:
        assert await r.json() == []
    assert (await plan(running, config))["allocation"] == first["allocation"]
    # the same placement code decides the submit: it lands where the plan said
    job_id = await submit(running, config)
    record = await wait_for(running, job_id, "completed")
    assert record["allocation"] == first["allocation"]


async def test_a_plan_says_why_the_job_would_wait_and_where(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    await create_queue(running, **LIMITED_QUEUE)
    gate = job_tmp / "may-end"
    holder = await submit(
        running, {"queue": "limited", "command": gated(gate), "resources": {"gpus": 2}}
    )
    await wait_for(running, holder, "running")
    waiting = await submit(
        running, {"queue": "limited", "command": ["true"], "resources": {"gpus": 2}}
    )
    await until_reason(running, waiting, "QueueResourceLimit")
    try:
        # behind the waiting job, in its queue's order; its 1 GPU (the queue's default)
        # fits the queue's total (2 held of 3), so it would start before the 2-GPU job
        # ahead of it, as the cycle lets a smaller job pass one that cannot start
        answer = await plan(running, {"queue": "limited", "command": ["true"]})
        assert answer["queue_position"] == 2
        assert answer["config"]["resources"]["gpus"] == 1
        assert answer["would_start"] is True, answer
        assert [len(p["gpus"]) for p in answer["allocation"]] == [1]
        ahead = await plan(running, {"queue": "limited", "command": ["true"]}, priority=5)
        assert ahead["queue_position"] == 1
        two = await plan(
            running, {"queue": "limited", "command": ["true"], "resources": {"gpus": 2}}
        )
        assert two["would_start"] is False
        assert two["reason"]["code"] == "QueueResourceLimit"
        assert "has 1 free of its maximum_allowed_resources.gpus 3" in two["reason"]["message"]
    finally:
        gate.touch()
    await wait_for(running, holder, "completed")
    await wait_for(running, waiting, "completed")


async def test_a_plan_refuses_what_a_submit_refuses(running: Running, fleet: Any) -> None:
    await create_queue(running, **LIMITED_QUEUE)
    body = {"config": {"queue": "limited", "command": ["true"], "resources": {"gpus": 4}}}
    async with running.http.post(f"{running.url}/jobs/plan", json=body) as r:
        answer = await r.json()
        assert r.status == 400, answer
    assert answer["error"]["details"]["path"] == "body.config.resources.gpus"
    assert "maximum_resources.gpus 2" in answer["message"]
    body = {"config": {"command": ["true"]}, "dry_run": True}  # an unknown field
    async with running.http.post(f"{running.url}/jobs/plan", json=body) as r:
        assert r.status == 400
        assert (await r.json())["error"]["details"]["path"] == "body.dry_run"


async def test_a_plan_with_an_unknown_policy_says_so(running: Running, fleet: Any) -> None:
    config = {"command": ["true"], "policy_rule_uri": "nosuch:1.0-stable"}
    answer = await plan(running, config)
    assert answer["would_start"] is False
    assert answer["reason"]["code"] == "UnknownPolicy", answer


async def test_submit_dry_run_prints_the_plan_and_submits_nothing(
    running: Running, fleet: Any, tmp_path: Path
) -> None:
    result = await cli(
        running, "submit", "--dry-run", "--gpus", "2", "--workers", "2", "--", "true"
    )
    out = ok(result)
    lines = out.splitlines()
    assert lines[0].startswith("The job would start now on "), out
    assert [line.split(" GPUs ")[1].count(",") for line in lines[1:3]] == [1, 1]  # 2 GPUs each
    assert lines[1].startswith("  worker 0: ") and lines[2].startswith("  worker 1: ")
    assert "Nothing was submitted (--dry-run; queue default, position 1)." in out
    async with running.http.get(f"{running.url}/jobs") as r:
        assert await r.json() == []
    # a refusal names the flag, as a submit's does
    await create_queue(running, **LIMITED_QUEUE)
    refused = await cli(
        running, "submit", "--dry-run", "--queue", "limited", "--gpus", "4", "--", "true"
    )
    assert refused.exit_code != 0
    assert "--gpus: " in refused.stderr and "maximum_resources.gpus 2" in refused.stderr
