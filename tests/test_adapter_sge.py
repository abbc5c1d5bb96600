"""The ``sge`` adapter against the real Son of Grid Engine of ``scripts/sge_up.sh`` (issue 12,
item 4), beyond the contract every adapter keeps (tests/test_adapter_contract.py): a job runs
as its user with its GPUs in ``CUDA_VISIBLE_DEVICES``, a gang is refused saying why, and a job
of a queue whose plugin is ``sge`` goes through the whole server — placed on a cluster whose
scheduler is SGE, dispatched, followed to its end, its output served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apportion.adapters.base import AdapterError, BackendState, JobSpec, WorkerSpec
from apportion.adapters.sge.adapter import SgeAdapter
from apportion.jobs.identity import python_for_jobs
from tests import builders as b
from tests import sge_env
from tests.conftest import running_server
from tests.jobs_helpers import create_queue, submit, wait_for

sge = sge_env.sge
PY = python_for_jobs()


@pytest.fixture
def theirs(sge: sge_env.SgeCell) -> Iterator[Path]:
    """A directory of the job user's, in a 0711 one in /tmp."""
    outer = Path(tempfile.mkdtemp(prefix="apportion-sge-"))
    outer.chmod(0o711)
    inner = outer / "job"
    inner.mkdir(mode=0o700)
    os.chown(inner, sge.run_as.uid, sge.run_as.gid)
    yield inner
    shutil.rmtree(outer, ignore_errors=True)


def spec_of(sge: sge_env.SgeCell, out: Path, argv: tuple[str, ...], workers: int = 1) -> JobSpec:
    return JobSpec(
        job_id=f"s-{uuid.uuid4().hex[:12]}",
        name="sge",
        command=argv,
        cluster_id="sge-local",
        scheduler={"type": "sge"},
        workers=tuple(
            WorkerSpec(index=i, node_id=sge.host, gpus=("1", "3")) for i in range(workers)
        ),
        output_dir=out,
        working_dir=str(out),
        run_as=sge.run_as,
    )


def logged_by_sge(jobs_root: Path, job_id: str) -> bool:
    return (jobs_root / ".sge" / job_id / "output.log").is_file()


PRINT = "import json, os; print(json.dumps([os.getuid(), os.getcwd(), os.environ['CUDA_VISIBLE_DEVICES'], os.environ['APPORTION_NUM_WORKERS']]))"


async def test_a_job_runs_as_its_user_with_its_gpus(sge: sge_env.SgeCell, theirs: Path) -> None:
    adapter = SgeAdapter(python=PY)
    spec = spec_of(sge, theirs, (PY, "-c", PRINT))
    job = await adapter.submit(spec)
    try:
        for _ in range(300):
            status = await adapter.poll(spec, job)
            if status.state.finished:
                break
            await asyncio.sleep(0.1)
        assert status.state is BackendState.COMPLETED, status
        printed = json.loads((await adapter.logs(spec, job)).text)
        assert printed == [sge.run_as.uid, str(theirs), "1,3", "1"]
        assert (theirs / "output.log").stat().st_uid == sge.run_as.uid  # SGE wrote it as them
    finally:
        await adapter.cancel(spec, job)


async def test_a_workers_vcpus_are_reserved_as_slots_of_its_host(
    sge: sge_env.SgeCell, theirs: Path
) -> None:
    adapter = SgeAdapter(python=PY)
    spec = spec_of(sge, theirs, (PY, "-c", "import time; time.sleep(300)"))
    spec = dataclasses.replace(spec, workers=(dataclasses.replace(spec.workers[0], vcpus=2),))
    job = await adapter.submit(spec)
    try:
        shown = await asyncio.to_thread(
            subprocess.run,
            ["qstat", "-j", job],
            env={**os.environ, **sge_env.SGE_ENV},
            capture_output=True,
            text=True,
            check=True,
        )
        lines = {
            line.partition(":")[0].strip(): line.partition(":")[2].strip()
            for line in shown.stdout.splitlines()
        }
        assert lines["parallel environment"].split() == ["smp", "range:", "2"]
    finally:
        await adapter.cancel(spec, job)


async def test_a_gang_is_refused_saying_why(sge: sge_env.SgeCell, theirs: Path) -> None:
    with pytest.raises(AdapterError, match="one worker per job"):
        await SgeAdapter(python=PY).submit(spec_of(sge, theirs, (PY, "-c", "pass"), workers=2))


async def test_a_queue_of_plugin_sge_runs_its_jobs_on_sge(
    sge: sge_env.SgeCell, tmp_path: Path, jobs_root: Path
) -> None:
    async with running_server(tmp_path / "data") as live:
        doc = b.cluster("grid", [b.node(sge.host, gpus=2)], config={"scheduler": {"type": "sge"}})
        async with live.http.post(f"{live.url}/clusters", json=doc) as response:
            assert response.status in (200, 201), await response.text()
        await create_queue(live, name="grid-q", plugin="sge")
        command = [PY, "-c", "print('on sge')"]
        job_id = await submit(
            live, {"queue": "grid-q", "command": command, "resources": {"gpus": 1}}
        )
        done: dict[str, Any] = await wait_for(live, job_id, "completed", "failed", within=60)
        assert done["status"] == "completed" and done["adapter"] == "sge", done
        assert done["scheduler_job_id"].isdigit()  # SGE's job number
        assert logged_by_sge(jobs_root, job_id)  # its log is the one qsub -o named
        async with live.http.get(f"{live.url}/jobs/{job_id}/logs") as response:
            assert (await response.text()).strip() == "on sge"
