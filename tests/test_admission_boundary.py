"""One bad queue cannot stop admission (issue 21, item 9).

Before: ``POST /queues {"clusters": {"nonsense": 1}}`` was accepted; from then on every
admission cycle raised, no job of any queue started, and each aborted cycle leaked the GPUs
already reserved for the jobs placed before it in that cycle (+2 per cycle; "coroutine
'JobLifecycle.admit' was never awaited"). Now a malformed filter is refused when the queue is
written, and a filter that fails only against the documents (a type mismatch) stops only its
own jobs, each waiting with the reason, while every reservation is committed or given back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tests.conftest import Running
from tests.jobs_helpers import job, sleeper, submit, wait_for


async def test_a_malformed_queue_filter_is_refused_when_the_queue_is_written(
    running: Running,
) -> None:
    body = {"name": "typo", "clusters": {"nonsense": 1}}
    for method in ("POST", "PUT"):
        if method == "PUT":  # an existing queue cannot be changed into a broken one either
            async with running.http.post(f"{running.url}/queues", json={"name": "typo"}) as r:
                assert r.status == 201
        async with running.http.request(method, f"{running.url}/queues", json=body) as r:
            answer = await r.json()
            assert r.status == 400, answer
        assert answer["error"]["details"]["path"] == "body.clusters"
        assert '"nonsense"' in answer["message"]
    async with running.http.get(f"{running.url}/queues/typo") as r:
        assert (await r.json())["clusters"] == []  # unchanged


async def test_a_queue_whose_filter_fails_on_the_documents_stops_only_its_own_jobs(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # well formed, so accepted; but every cluster's name is a string, not a number
    mismatch = {"variable": "clusterMetadata.name", "operator": ">", "value": 3}
    async with running.http.post(
        f"{running.url}/queues", json={"name": "mismatch", "clusters": mismatch}
    ) as r:
        assert r.status == 201, await r.text()
    # placed first in each cycle (higher priority), so its GPUs are reserved before the
    # failing job is tried: the reservation the old cycle leaked
    first = await submit(running, {"command": sleeper(0), "resources": {"gpus": 2}}, priority=5)
    stuck = await submit(running, {"queue": "mismatch", "command": sleeper(0)}, priority=1)
    last = await submit(running, {"command": sleeper(0), "resources": {"gpus": 1}})
    for job_id in (first, last):
        record = await wait_for(running, job_id, "completed", "failed")
        assert record["status"] == "completed", record
    waiting = await job(running, stuck)
    assert waiting["status"] == "queued"
    assert waiting["reason"]["code"] == "InvalidRequest", waiting
    assert "is a string" in waiting["reason"]["message"]
    context = running.server.context
    assert context is not None
    for _ in range(600):  # a job's GPUs are released just after its end is recorded
        if not context.holds.active():
            break
        await asyncio.sleep(0.05)
    assert context.holds.active() == []  # both ended jobs gave their GPUs back
    assert int(np.count_nonzero(context.registry.fleet.held)) == 0  # and none leaked
    async with running.http.post(f"{running.url}/jobs/{stuck}/cancel") as r:
        assert r.status == 200
