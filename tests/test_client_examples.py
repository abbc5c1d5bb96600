"""The client examples run as real processes against a real server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from tests import slurm_env
from tests.conftest import ADMIN_KEY, Running

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
slurm = slurm_env.slurm


async def run_example(running: Running, tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "APPORTION_URL": running.url,
        "APPORTION_WS_URL": running.ws_url,
        "APPORTION_API_KEY": ADMIN_KEY,
        "APPORTION_CREDENTIALS": str(tmp_path / "no-credentials"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    return process.returncode or 0, out.decode()


async def test_submit_and_follow(running: Running, fleet: Any, tmp_path: Path) -> None:
    code, out = await run_example(running, tmp_path, str(EXAMPLES / "submit_and_follow.py"))
    assert code == 0, out
    kinds = [line.split()[2] for line in out.splitlines() if line.startswith("event ")]
    assert kinds == ["job_queued", "job_scheduled", "job_started", "job_completed"]
    assert out.count("  placed on ") == 2  # two workers, one GPU each
    assert "worker 0 of 2" in out and "worker 1 of 2" in out
    assert "completed (return code 0)" in out


async def test_sync_quickstart(running: Running, fleet: Any, tmp_path: Path) -> None:
    code, out = await run_example(running, tmp_path, str(EXAMPLES / "sync_quickstart.py"))
    assert code == 0, out
    assert "allocate: {'cluster_id'" in out and "holding " in out
    assert "status: completed" in out and "output: hello from a job" in out
    async with running.http.get(f"{running.url}/allocations") as response:
        assert (await response.json())["data"] == []  # the hold was released


async def test_register_slurm_cluster(
    running: Running, tmp_path: Path, slurm: slurm_env.SlurmCluster
) -> None:
    script = str(EXAMPLES / "register_slurm_cluster.py")
    code, out = await run_example(running, tmp_path, script, "hpc", slurm.partition)
    assert code == 0, out
    assert f"registered hpc: {len(slurm.nodes)} nodes from partition {slurm.partition}" in out
    assert all(f"  {node}: " in out for node in slurm.nodes)
    assert "created queue hpc" in out
    async with running.http.get(f"{running.url}/clusters/hpc") as response:
        doc = await response.json()
    assert [n["id"] for n in doc["nodes"]["nodeData"]] == list(slurm.nodes)
