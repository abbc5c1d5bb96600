"""A queue's resource limits are applied, or refused where they are written (issue 10, item 1).

Before, as a user found: a queue with ``maximum_resources {"gpus": 2}`` ran a 4-GPU job,
``maximum_allowed_resources {"gpus": 3}`` ran 2 × 2 GPUs at once, and ``default_resources
{"gpus": 1}`` gave a job no GPU. Jobs run on the real local adapter over the demo fleet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apportion.jobs.models import STORED, QueueConfig
from tests.cli_helpers import cli
from tests.conftest import Running
from tests.jobs_helpers import (
    LIMITED_QUEUE,
    PY,
    create_queue,
    gated,
    job,
    refused,
    sleeper,
    submit,
    until_reason,
    wait_for,
)


async def test_a_job_without_gpus_gets_the_queues_default(running: Running, fleet: Any) -> None:
    await create_queue(running, **LIMITED_QUEUE)
    job_id = await submit(running, {"queue": "limited", "command": sleeper(0)})
    record = await wait_for(running, job_id, "completed")
    assert record["config"]["resources"]["gpus"] == 1
    assert len(record["allocation"][0]["gpus"]) == 1  # it was placed with the GPU
    # a job that says 0 keeps 0: only what it left unset takes the default
    none = await submit(running, {"queue": "limited", "command": sleeper(0), "resources": {}})
    zero = {"queue": "limited", "command": sleeper(0), "resources": {"gpus": 0}}
    explicit = await submit(running, zero)
    assert (await wait_for(running, none, "completed"))["config"]["resources"]["gpus"] == 1
    assert (await wait_for(running, explicit, "completed"))["allocation"][0]["gpus"] == []


async def test_more_than_a_worker_may_have_is_refused_at_submit(
    running: Running, fleet: Any
) -> None:
    await create_queue(running, **LIMITED_QUEUE)
    answer = await refused(
        running, {"queue": "limited", "command": ["true"], "resources": {"gpus": 4}}
    )
    assert answer["error"]["details"]["path"] == "body.config.resources.gpus"
    assert "maximum_resources.gpus 2" in answer["message"], answer
    # 2 workers × 2 GPUs = 4 > the queue's total of 3: it could never start
    gang = {"queue": "limited", "command": ["true"], "replica_count": 2, "resources": {"gpus": 2}}
    answer = await refused(running, gang)
    assert "asks for 4 gpus (2 per worker × 2)" in answer["message"], answer
    assert "maximum_allowed_resources.gpus" in answer["message"]
    async with running.http.get(f"{running.url}/jobs") as r:
        assert await r.json() == []  # nothing was stored


async def test_a_total_unset_on_the_job_is_refused_naming_the_field(running: Running) -> None:
    await create_queue(running, name="cpus", maximum_allowed_resources={"vcpus": 8})
    answer = await refused(running, {"queue": "cpus", "command": ["true"]})
    assert answer["error"]["details"]["path"] == "body.config.resources.vcpus"
    assert "set config.resources.vcpus" in answer["message"]


async def test_the_queues_total_holds_the_second_job_until_the_first_ends(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    await create_queue(running, **LIMITED_QUEUE)
    gate = job_tmp / "first-may-end"
    first = {"queue": "limited", "command": gated(gate), "resources": {"gpus": 2}}
    first_id = await submit(running, first)
    await wait_for(running, first_id, "running")
    second = await submit(
        running, {"queue": "limited", "command": sleeper(0), "resources": {"gpus": 2}}
    )
    await until_reason(running, second, "QueueResourceLimit", "needs 2 gpus")
    record = await job(running, second)
    assert record["status"] == "queued"
    assert (
        "has 1 free of its maximum_allowed_resources.gpus 3 (2 held)"
        in (record["reason"]["message"])
    )
    async with running.http.get(f"{running.url}/queue") as r:
        held = (await r.json())["queues"]["limited"]["resources_held"]
    assert held == {"gpus": 2, "vcpus": 0, "memory_mb": 0}  # the running job's 1 × 2 GPUs
    table = await cli(running, "queues")
    assert table.exit_code == 0, table.output
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("limited ")]
    assert "2 / 3" in row  # GPUS HELD of maximum_allowed_resources.gpus
    gate.touch()
    await wait_for(running, first_id, "completed")
    await wait_for(running, second, "completed")


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"default_resources": {"cpu": 2}}, "body.default_resources", "Apportion's is vcpus"),
        (
            {"maximum_resources": {"memory_gb": 8}},
            "body.maximum_resources",
            "Apportion's is memory_mb",
        ),
        ({"maximum_allowed_resources": {"gpu": 2}}, "body.maximum_allowed_resources.gpu", ""),
        ({"maximum_resources": {"gpus": -1}}, "body.maximum_resources.gpus", ""),
        (
            {"default_resources": {"gpus": 4}, "maximum_resources": {"gpus": 2}},
            "body",
            "default_resources.gpus 4 is more than maximum_resources.gpus 2",
        ),
    ],
    ids=["seed-cpu", "seed-memory-gb", "unknown", "negative", "default-above-maximum"],
)
async def test_a_queue_limit_that_cannot_be_applied_is_refused(
    running: Running, fields: dict[str, Any], path: str, words: str
) -> None:
    async with running.http.post(f"{running.url}/queues", json={"name": "bad", **fields}) as r:
        answer = await r.json()
        assert r.status == 400, answer
    assert answer["error"]["details"]["path"] == path, answer
    assert words in answer["message"], answer


async def test_a_queues_plugin_chooses_the_scheduler(running: Running, fleet: Any) -> None:
    # the test fleet's clusters name no scheduler: they run jobs locally, so a queue whose
    # plugin is slurm has nowhere to place (before, its job ran locally)
    await create_queue(running, name="on-slurm", plugin="slurm")
    waiting = await submit(running, {"queue": "on-slurm", "command": ["true"]})
    await until_reason(
        running, waiting, "NoFeasiblePlacement", "queue 'on-slurm' runs its jobs with the slurm"
    )
    record = await job(running, waiting)
    assert record["status"] == "queued" and record["scheduler_job_id"] is None
    await create_queue(running, name="on-local", plugin="local")
    local = await submit(running, {"queue": "on-local", "command": ["true"]})
    assert (await wait_for(running, local, "completed"))["adapter"] == "local"


async def test_a_queues_env_reaches_its_jobs(running: Running, fleet: Any) -> None:
    env = {"TEAM": "vision", "SHARED": "from-queue", "PYTHONPATH": "/opt/team"}
    await create_queue(running, name="team", env=env)
    show = "import os; print(os.environ['TEAM'], os.environ['SHARED'], os.environ['PYTHONPATH'])"
    config = {"queue": "team", "command": [PY, "-c", show], "env": {"SHARED": "from-job"}}
    job_id = await submit(running, config)
    record = await wait_for(running, job_id, "completed", "failed")
    # the job's own variable wins; the admin's PYTHONPATH is not held to the jobs' env rule
    assert record["config"]["env"] == {**env, "SHARED": "from-job"}
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as r:
        assert (await r.text()).strip() == "vision from-job /opt/team"


async def test_the_pool_limit_goes_back_to_unlimited(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    # before, PUT /pool/limits took only 1-100: once set, the pool could never be unlimited
    url = f"{running.url}/pool/limits"
    async with running.http.put(url, json={"max_concurrent_jobs": 1}) as r:
        assert r.status == 200
    async with running.http.put(url, json={"max_concurrent_jobs": None}) as r:
        assert r.status == 200, await r.text()
    async with running.http.get(f"{running.url}/queue") as r:
        assert (await r.json())["limits"] == {"max_concurrent_jobs": None}
    # two jobs run at once again: the second ends while the first holds its slot
    gate = job_tmp / "first-may-end"
    first = await submit(running, {"command": gated(gate)})
    await wait_for(running, first, "running")
    second = await submit(running, {"command": sleeper(0)})
    await wait_for(running, second, "completed")
    assert (await job(running, first))["status"] == "running"
    gate.touch()
    await wait_for(running, first, "completed")


@pytest.mark.parametrize(
    ("resources", "workers", "words"),
    [
        ({"gpus": 1, "gpu_model": "B200"}, 1, "none has a node that could hold one"),
        ({"gpus": 9}, 1, "none has a node that could hold one"),  # the nodes have 8 GPUs
        # 100 × 8 = 800 GPUs on a fleet of 352: the largest cluster holds 16 such workers
        ({"gpus": 8}, 100, "the most any could hold is 16 (a100-west)"),
    ],
    ids=["no-such-model", "more-than-a-node", "more-than-a-cluster"],
)
async def test_a_job_no_cluster_could_ever_hold_is_refused_at_submit(
    running: Running, fleet: Any, resources: dict[str, Any], workers: int, words: str
) -> None:
    config = {"command": ["true"], "resources": resources, "replica_count": workers}
    answer = await refused(running, config)
    assert answer["error"]["details"]["path"] == "body.config.resources", answer
    assert "can never start in queue 'default'" in answer["message"]
    assert words in answer["message"], answer["message"]


async def test_a_job_that_fills_a_cluster_or_has_no_cluster_yet_is_accepted(
    running: Running, fleet: Any
) -> None:
    whole = {"command": ["true"], "replica_count": 16, "resources": {"gpus": 8}}
    assert (await wait_for(running, await submit(running, whole), "completed"))["allocation"]
    # a queue whose clusters are not registered (yet): the job is accepted and waits
    await create_queue(running, name="later", clusters=["not-yet"])
    waiting = await submit(running, {"queue": "later", "command": ["true"]})
    await until_reason(running, waiting, "NoFeasiblePlacement")


def test_a_queue_stored_before_the_names_were_checked_still_loads() -> None:
    # seed 000's names were accepted (and ignored) before: such a stored queue loads, without them
    stored = {"name": "old", "default_resources": {"cpu": 2, "gpus": 1}, "maximum_resources": {}}
    queue = QueueConfig.model_validate(stored, context=STORED)
    assert queue.default_resources.amounts() == {"gpus": 1}
    assert queue.model_dump()["default_resources"] == {"gpus": 1}


async def test_a_queues_walltimes_apply(running: Running, fleet: Any) -> None:
    await create_queue(running, name="timed", default_walltime=600, maximum_walltime=3600)
    job_id = await submit(running, {"queue": "timed", "command": ["true"]})
    assert (await job(running, job_id))["config"]["walltime"] == 600  # the queue's default
    answer = await refused(running, {"queue": "timed", "command": ["true"], "walltime": 7200})
    assert answer["error"]["details"]["path"] == "body.config.walltime"
    assert "must be at most 3600 s in queue 'timed' (its maximum_walltime)" in answer["message"]
    await wait_for(running, job_id, "completed")
    body = {"name": "bad", "default_walltime": 7200, "maximum_walltime": 3600}
    async with running.http.post(f"{running.url}/queues", json=body) as r:
        answer = await r.json()
        assert r.status == 400
    assert "default_walltime 7200 is more than maximum_walltime 3600" in answer["message"]
