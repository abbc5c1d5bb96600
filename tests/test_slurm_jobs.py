"""Jobs through the REST API on a real Slurm (started by scripts/slurm_up.sh; see tests/slurm_env.py).

The cluster is registered without nodeData and discovered from Slurm; jobs are placed by the
queue's policy, held, submitted with sbatch, and followed to their end.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import slurm_env
from tests.conftest import Running, running_server
from tests.jobs_helpers import (
    PY,
    create_queue,
    exiting,
    run_counter,
    runs_counted,
    sleeper,
    submit,
    until_counted,
    wait_for,
)

slurm = slurm_env.slurm


@pytest.fixture
async def running(tmp_path: Path, jobs_root: Path) -> AsyncIterator[Running]:
    async with running_server(tmp_path / "data") as live:
        yield live


SHOW_ENV = [
    PY,
    "-c",
    "import os, json; print(json.dumps({k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', "
    "'SLURMD_NODENAME', 'APPORTION_WORKER_INDEX', 'APPORTION_NUM_WORKERS')}))",
]


async def register_slurm(running: Running, cluster: slurm_env.SlurmCluster) -> dict[str, Any]:
    body = {
        "id": "hpc",
        "config": {
            "scheduler": {"type": "slurm", "partition": cluster.partition, "gpu_memory_mb": 16384}
        },
    }
    async with running.http.post(f"{running.url}/clusters", json=body) as response:
        doc: dict[str, Any] = await response.json()
        assert response.status == 201, doc
    await create_queue(running, name="hpc", clusters=["hpc"], plugin="slurm")
    return doc


async def logs(running: Running, job_id: str) -> list[dict[str, Any]]:
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        text = await response.text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_discovery_and_a_two_gpu_job_on_the_chosen_node(
    running: Running, slurm: slurm_env.SlurmCluster
) -> None:
    doc = await register_slurm(running, slurm)
    nodes = doc["nodes"]["nodeData"]
    assert [n["id"] for n in nodes] == list(slurm.nodes)
    assert all(n["gpus"]["count"] == 4 for n in nodes)
    job_id = await submit(running, {"queue": "hpc", "command": SHOW_ENV, "resources": {"gpus": 2}})
    record = await wait_for(running, job_id, "completed", "failed", within=60)
    assert record["status"] == "completed", record
    node = record["allocation"][0]["node_id"]
    [env] = await logs(running, job_id)
    assert env["SLURMD_NODENAME"] == node
    assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 2
    assert record["scheduler_job_id"].isdigit()


async def test_a_slurm_job_runs_as_its_accounts_user(
    running: Running, slurm: slurm_env.SlurmCluster
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the server is not root: Slurm runs its jobs as this user")
    await register_slurm(running, slurm)
    who = [
        PY,
        "-c",
        "import json, os, pwd; print(json.dumps({'user': pwd.getpwuid(os.geteuid())"
        ".pw_name, 'groups': os.getgroups()}))",
    ]
    job_id = await submit(running, {"queue": "hpc", "command": who})
    record = await wait_for(running, job_id, "completed", "failed", within=60)
    assert record["status"] == "completed", record
    [seen] = await logs(running, job_id)
    assert seen["user"] == "apportion-jobs" and 0 not in seen["groups"], seen

    # an account with its own OS user: sbatch --uid makes Slurm run (and account) it as that user
    async with running.http.post(
        f"{running.url}/accounts", json={"name": "team-b", "os_user": "apportion-tenant-b"}
    ) as response:
        assert response.status == 201, await response.text()
    async with running.http.post(
        f"{running.url}/keys", json={"name": "bob", "account": "team-b"}
    ) as response:
        secret = (await response.json())["data"]["api_key"]
    body = {"config": {"queue": "hpc", "command": who}}
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as bob,
        bob.post(f"{running.url}/jobs/submit", json=body) as response,
    ):
        assert response.status == 201, await response.text()
        job_id = (await response.json())["job_id"]
    record = await wait_for(running, job_id, "completed", "failed", within=60)
    assert record["status"] == "completed", record
    [seen] = await logs(running, job_id)
    assert seen["user"] == "apportion-tenant-b" and 0 not in seen["groups"], seen


async def test_a_gang_of_two_workers_on_two_nodes(
    running: Running, slurm: slurm_env.SlurmCluster
) -> None:
    await register_slurm(running, slurm)
    # 4 GPUs per worker fill a node each, so the two workers land on two nodes
    job_id = await submit(
        running, {"queue": "hpc", "command": SHOW_ENV, "replica_count": 2, "resources": {"gpus": 4}}
    )
    record = await wait_for(running, job_id, "completed", "failed", within=60)
    assert record["status"] == "completed", record
    placed = [p["node_id"] for p in record["allocation"]]
    assert len(set(placed)) == 2
    seen = await logs(running, job_id)
    assert sorted(e["SLURMD_NODENAME"] for e in seen) == sorted(placed)
    assert sorted(e["APPORTION_WORKER_INDEX"] for e in seen) == ["0", "1"]
    assert {e["APPORTION_NUM_WORKERS"] for e in seen} == {"2"}


async def test_exit_code_and_cancel(running: Running, slurm: slurm_env.SlurmCluster) -> None:
    await register_slurm(running, slurm)
    failing = await submit(
        running, {"queue": "hpc", "command": exiting(3), "resources": {"gpus": 1}}
    )
    sleeping = await submit(
        running, {"queue": "hpc", "command": sleeper(120), "resources": {"gpus": 1}}
    )
    record = await wait_for(running, failing, "completed", "failed", within=60)
    assert record["status"] == "failed" and record["return_code"] == 3
    await wait_for(running, sleeping, "running", within=60)
    async with running.http.post(f"{running.url}/jobs/{sleeping}/cancel") as response:
        assert response.status == 200
    assert (await wait_for(running, sleeping, "cancelled", within=60))["end_time"]


@pytest.mark.parametrize("crash_at", ["before_submit", "after_submit"])
async def test_reconciliation_after_sigkill(
    tmp_path: Path, job_tmp: Path, jobs_root: Path, slurm: slurm_env.SlurmCluster, crash_at: str
) -> None:
    from tests.test_job_crashes import marker_command, submit_until_the_crash

    data, marker = tmp_path / "data", job_tmp / "ran.txt"
    async with running_server(data) as live:
        await register_slurm(live, slurm)
    config = {"queue": "hpc", "command": marker_command(marker), "resources": {"gpus": 1}}
    job_id = await submit_until_the_crash(data, crash_at, config)
    async with running_server(data) as live:
        record = await wait_for(live, job_id, "completed", "failed", within=60)
    assert record["status"] == "completed", record
    await asyncio.sleep(1.0)
    assert marker.read_text() == "ran\n"


async def test_a_preempted_slurm_job_is_scancelled_and_requeued(
    tmp_path: Path, job_tmp: Path, jobs_root: Path, slurm: slurm_env.SlurmCluster
) -> None:
    from apportion.jobs.priority import SchedulingConfig

    eager = SchedulingConfig(preemption_min_run_seconds=0, preemption_interval_seconds=0)
    async with running_server(tmp_path / "data", scheduling=eager) as live:
        await register_slurm(live, slurm)
        await create_queue(
            live, name="urgent", clusters=["hpc"], plugin="slurm", preempt_lower_priority=True
        )
        marker = job_tmp / "runs"
        workers = len(slurm.nodes)  # 4 GPUs each: every GPU of the partition
        low = await submit(
            live,
            {
                "queue": "urgent",
                "command": run_counter(marker),
                "replica_count": workers,
                "resources": {"gpus": 4},
            },
        )
        submitted = [low]
        try:
            first_run = (await wait_for(live, low, "running", within=60))["scheduler_job_id"]
            await until_counted(marker, workers)  # every worker runs its command
            high = await submit(
                live,
                {"queue": "urgent", "command": sleeper(0.5), "resources": {"gpus": 4}},
                priority=10,
            )
            submitted.append(high)
            await wait_for(live, high, "completed", within=90)
            done = await wait_for(live, low, "completed", "failed", within=90)
            assert done["status"] == "completed", done
            assert done["runs"] == 1 and done["scheduler_job_id"] != first_run  # a new Slurm job
            async with live.http.get(f"{live.url}/jobs/{low}/statuses") as response:
                history = await response.json()
            assert [e["status"] for e in history].count("queued") == 2
            runs = [runs_counted(marker, index) for index in range(workers)]
            assert runs == ["2"] * workers  # every worker ran twice: stopped, then to its end
        finally:  # a failed test leaves no Slurm job behind
            for job_id in submitted:
                async with live.http.post(f"{live.url}/jobs/{job_id}/cancel") as response:
                    assert response.status in (200, 409)
        assert any(f"preempted by job {high}" in (e["reason"] or "") for e in history)
