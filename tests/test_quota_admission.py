"""Quotas and cohorts at work (issue 10, item 2): a real server, the real local adapter, the
demo fleet (dgx-east: 16 nodes of 8 H100; a100-west: 16 nodes of 8 A100).

A queue's jobs use at most its nominal quota of each GPU model; in a cohort a queue borrows what
the others leave unused, within its borrowing limit and their lending limits; GPU models are
tried in the quota's order; what a queue uses is in ``GET /queue`` and ``apportion queues``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli_helpers import cli, ok
from tests.conftest import Running
from tests.jobs_helpers import (
    create_queue,
    gated,
    job,
    refused,
    submit,
    until_reason,
    wait_for,
)


async def quota_of(running: Running, queue: str) -> dict[str, Any]:
    async with running.http.get(f"{running.url}/queue") as r:
        quota: dict[str, Any] = (await r.json())["queues"][queue]["quota"]
    return quota


def clusters_of(record: dict[str, Any]) -> set[str]:
    return {p["cluster_id"] for p in record["allocation"]}


async def test_a_queue_uses_at_most_its_nominal_quota(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    await create_queue(running, name="solo", quota={"gpus": {"H100": {"nominal": 4}}})
    gate = job_tmp / "may-end"
    first = await submit(
        running, {"queue": "solo", "command": gated(gate), "resources": {"gpus": 4}}
    )
    record = await wait_for(running, first, "running")
    assert clusters_of(record) == {"dgx-east"}  # the quota's model: H100
    second = await submit(running, {"queue": "solo", "command": ["true"], "resources": {"gpus": 2}})
    await until_reason(
        running, second, "QueueQuota", "needs 2 H100 GPU(s); queue 'solo' uses 4 of its quota 4"
    )
    assert (await quota_of(running, "solo"))["gpus"]["H100"] == {
        "nominal": 4,
        "used": 4,
        "borrowed": 0,
    }
    async with running.http.get(f"{running.url}/queues/solo") as r:  # its REST record too
        assert (await r.json())["quota_used"]["gpus"]["H100"]["used"] == 4
    gate.touch()
    await wait_for(running, first, "completed")
    assert clusters_of(await wait_for(running, second, "completed")) == {"dgx-east"}
    # what could never fit, or asks for a model the quota has not, is refused at submit
    answer = await refused(
        running, {"queue": "solo", "command": ["true"], "resources": {"gpus": 5}}
    )
    assert answer["error"]["details"]["path"] == "body.config.resources"
    assert (
        "asks for 5 H100 GPU(s)" in answer["message"] and "quota of them is 4" in answer["message"]
    )
    answer = await refused(
        running,
        {"queue": "solo", "command": ["true"], "resources": {"gpus": 1, "gpu_model": "A100"}},
    )
    assert answer["error"]["details"]["path"] == "body.config.resources.gpu_model"
    assert "GPUs of models H100 only" in answer["message"]


async def test_the_quotas_models_are_tried_in_order(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    quota = {"gpus": {"H100": {"nominal": 2}, "A100": {"nominal": 8}}}
    await create_queue(running, name="two-models", quota=quota)
    gate = job_tmp / "may-end"
    config = {"queue": "two-models", "command": gated(gate), "resources": {"gpus": 2}}
    first = await submit(running, config)
    assert clusters_of(await wait_for(running, first, "running")) == {"dgx-east"}
    second = await submit(running, config)  # H100 is used up: the next model
    assert clusters_of(await wait_for(running, second, "running")) == {"a100-west"}
    status = await quota_of(running, "two-models")
    assert status["gpus"]["H100"]["used"] == 2 and status["gpus"]["A100"]["used"] == 2
    gate.touch()
    await wait_for(running, first, "completed")
    await wait_for(running, second, "completed")


async def test_a_queue_borrows_what_its_cohort_leaves_unused(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    await create_queue(running, name="a", cohort="lab", quota={"gpus": {"H100": {"nominal": 4}}})
    b_quota = {"gpus": {"H100": {"nominal": 4, "lending_limit": 2}}}  # b keeps 2 for itself
    await create_queue(running, name="b", cohort="lab", quota=b_quota)
    gate = job_tmp / "may-end"
    # a asks 6: its 4 and 2 of b's — b lends at most 2
    borrower = await submit(
        running,
        {"queue": "a", "command": gated(gate), "replica_count": 3, "resources": {"gpus": 2}},
    )
    await wait_for(running, borrower, "running")
    status = await quota_of(running, "a")
    assert status["gpus"]["H100"] == {"nominal": 4, "used": 6, "borrowed": 2}
    more = await submit(running, {"queue": "a", "command": ["true"], "resources": {"gpus": 1}})
    await until_reason(
        running,
        more,
        "QueueQuota",
        "needs 1 H100 GPU(s); queue 'a' uses 6 of its quota 4, and its cohort 'lab' has 0 of it"
        " free to lend",
    )
    # b's own 2 are still there, whatever a borrowed; the 2 it lent are not
    own = await submit(running, {"queue": "b", "command": gated(gate), "resources": {"gpus": 2}})
    await wait_for(running, own, "running")
    lent = await submit(running, {"queue": "b", "command": ["true"], "resources": {"gpus": 1}})
    await until_reason(running, lent, "QueueQuota", "needs 1 H100 GPU(s); queue 'b' uses 2")
    assert "(queue 'a' borrows 2)" in (await job(running, lent))["reason"]["message"]
    plan_body = {"config": {"queue": "b", "command": ["true"], "resources": {"gpus": 1}}}
    async with running.http.post(f"{running.url}/jobs/plan", json=plan_body) as r:
        plan = await r.json()
    assert plan["would_start"] is False and plan["reason"]["code"] == "QueueQuota", plan
    table = ok(await cli(running, "queues"))
    (row,) = [line for line in table.splitlines() if line.startswith("a ")]
    assert "H100 6/4" in row, table
    gate.touch()
    for job_id in (borrower, own, more, lent):
        await wait_for(running, job_id, "completed")
    assert (await job(running, more))["status"] == "completed"


async def test_a_borrowing_limit_holds(running: Running, fleet: Any, job_tmp: Path) -> None:
    capped = {"gpus": {"H100": {"nominal": 2, "borrowing_limit": 1}}}
    await create_queue(running, name="capped", cohort="lab", quota=capped)
    await create_queue(running, name="idle", cohort="lab", quota={"gpus": {"H100": {"nominal": 8}}})
    answer = await refused(
        running, {"queue": "capped", "command": ["true"], "resources": {"gpus": 4}}
    )
    assert "with 1 more it may borrow" in answer["message"], answer
    gate = job_tmp / "may-end"
    first = await submit(
        running, {"queue": "capped", "command": gated(gate), "resources": {"gpus": 3}}
    )
    await wait_for(running, first, "running")
    second = await submit(
        running, {"queue": "capped", "command": ["true"], "resources": {"gpus": 1}}
    )
    await until_reason(running, second, "QueueQuota", "needs 1 H100 GPU(s); queue 'capped'")
    assert (
        "may borrow 1 more (its borrowing_limit)"
        in (await job(running, second))["reason"]["message"]
    )
    gate.touch()
    await wait_for(running, first, "completed")
    await wait_for(running, second, "completed")


async def test_a_cohort_without_a_quota_is_refused_naming_the_field(running: Running) -> None:
    async with running.http.post(f"{running.url}/queues", json={"name": "x", "cohort": "lab"}) as r:
        answer = await r.json()
        assert r.status == 400, answer
    assert "cohort 'lab' needs a quota" in answer["message"]
