"""The ``lsf`` adapter against recorded outputs of LSF's commands (issue 12, item 4).

No LSF can be installed on this machine, so these tests are not against a real LSF: stand-in
``bsub``/``bjobs``/``bkill``/``bqueues`` executables (tests/recorded_cli.py) answer with
outputs the real commands print (tests/data/lsf/) and write down the argv they were given.
What is real: the adapter's commands run as separate programs with argv lists, the files it
writes for the job, and the batch launcher, which these tests run as LSF's execution host
would (it runs the job's command and records how it ended).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apportion.adapters.base import AdapterError, BackendState, JobSpec, WorkerSpec
from apportion.adapters.lsf.adapter import LsfAdapter
from apportion.adapters.lsf.parse import cpu_seconds, parse_records
from tests.recorded_cli import RecordedTools, recorded

RUN = "5d0e4a9c1b7f4e2a8c3d6b9a0e1f2c3d"  # the job of the recordings
JOB = "7311"


@pytest.fixture
def tools(tmp_path: Path) -> RecordedTools:
    return RecordedTools(tmp_path / "lsf", ("bsub", "bjobs", "bkill", "bqueues"))


def spec_of(out: Path, argv: tuple[str, ...], *, workers: int = 1) -> JobSpec:
    return JobSpec(
        job_id=RUN,
        name="train",
        command=argv,
        cluster_id="lsf-cluster",
        scheduler={"type": "lsf"},
        workers=tuple(
            WorkerSpec(index=i, node_id="gpu-node-1", gpus=("0", "1"), vcpus=4, memory_mb=2048)
            for i in range(workers)
        ),
        output_dir=out,
        working_dir=str(out),
        walltime_seconds=90,
    )


def run_as_lsf_would(out: Path, bsub: list[str]) -> None:
    """What LSF's execution host does with the job: run the command bsub was given, with
    LSB_JOBID set, its output into the ``-o`` file."""
    command = bsub[bsub.index("-I") - 1 :]  # python3 -I <launcher> <launch file>
    env = {**os.environ, "LSB_JOBID": JOB}
    with (out / "output.log").open("wb") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=60)


async def test_a_job_is_submitted_as_argv_found_followed_and_its_exit_code_kept(
    tools: RecordedTools, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = LsfAdapter(tools=tools.paths, python=sys.executable)
    argv = (sys.executable, "-c", "import sys; print('hello `id`'); sys.exit(3)")
    spec = spec_of(out, argv)
    tools.answer("bjobs", recorded("lsf/bjobs-no-job-found.txt"), rc=255, when="-J")
    tools.answer("bsub", recorded("lsf/bsub.txt"))
    assert await adapter.submit(spec) == JOB
    (bsub,) = tools.calls("bsub")
    assert bsub == [
        "-J", f"apportion-{RUN}", "-o", str(out / "output.log"),
        "-n", "4", "-R", "span[hosts=1]", "-m", "gpu-node-1", "-R", "rusage[mem=2048MB]",
        "-gpu", "num=2", "-W", "2",
        sys.executable, "-I", str(out / "lsf-launch.py"), str(out / "lsf-launch.json"),
    ]  # fmt: skip
    assert json.loads((out / "lsf-launch.json").read_text())["argv"] == list(argv)
    assert not any("hello" in word for word in bsub)  # the user's words stay in the file

    # a restarted server finds it by its name with bjobs -J
    tools.answer("bjobs", recorded("lsf/bjobs-pend.json"), when="-J")
    assert await LsfAdapter(tools=tools.paths).find(spec) == JOB
    assert tools.calls("bjobs")[-1][-3:] == ["-a", "-J", f"apportion-{RUN}"]

    tools.answer("bjobs", recorded("lsf/bjobs-pend.json"), when=JOB)
    assert (await adapter.poll(spec, JOB)).state is BackendState.PENDING
    tools.answer("bjobs", recorded("lsf/bjobs-run.json"), when=JOB)
    assert (await adapter.poll(spec, JOB)).state is BackendState.RUNNING

    await asyncio.to_thread(run_as_lsf_would, out, bsub)  # the job runs, and ends
    tools.answer("bjobs", recorded("lsf/bjobs-exit.json"), when=JOB, keep=True)
    status = await adapter.poll(spec, JOB)
    assert (status.state, status.return_code, status.exit_codes) == (
        BackendState.FAILED,
        3,
        (3,),
    )
    assert await adapter.find(spec) == JOB  # recorded by the launcher when it started
    chunk = await adapter.logs(spec, JOB)
    assert (chunk.text, chunk.complete) == ("hello `id`\n", True)
    assert (await adapter.usage(spec, JOB))["cpuSeconds"] == 0.4


async def test_without_the_launchers_record_lsf_decides(
    tools: RecordedTools, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = LsfAdapter(tools=tools.paths)
    spec = spec_of(out, ("true",))
    tools.answer("bjobs", recorded("lsf/bjobs-done.json"), when=JOB)
    status = await adapter.poll(spec, JOB)
    assert (status.state, status.return_code) == (BackendState.COMPLETED, 0)
    tools.answer("bjobs", recorded("lsf/bjobs-killed.json"), when=JOB)
    status = await adapter.poll(spec, JOB)
    assert (status.state, status.return_code) == (BackendState.FAILED, 130)
    assert status.reason == "TERM_OWNER: job killed by owner (LSF's)"
    tools.answer("bjobs", recorded("lsf/bjobs-not-found.json"), rc=255, when=JOB)
    status = await adapter.poll(spec, JOB)  # forgotten, and no launcher ever ran
    assert status.state is BackendState.FAILED and status.never_started
    tools.answer("bjobs", "LSF is down; try again later", rc=255, when=JOB)
    with pytest.raises(AdapterError) as down:
        await adapter.poll(spec, JOB)
    assert down.value.retryable


async def test_cancel_is_bkill_and_reads_cancelled(tools: RecordedTools, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = LsfAdapter(tools=tools.paths)
    spec = spec_of(out, ("sleep", "300"))
    tools.answer("bkill", "Job <7311> is being terminated\n")
    await adapter.cancel(spec, JOB)
    assert tools.calls("bkill") == [[JOB]]
    tools.answer("bjobs", recorded("lsf/bjobs-killed.json"), when=JOB)
    status = await adapter.poll(spec, JOB)
    assert status.state is BackendState.CANCELLED and status.reason == "cancelled (bkill)"
    with pytest.raises(AdapterError):
        await adapter.cancel(spec, "7311 -u all")  # not an LSF job id: never passed on


async def test_queues_and_what_is_refused(tools: RecordedTools, tmp_path: Path) -> None:
    adapter = LsfAdapter(tools=tools.paths)
    tools.answer("bqueues", recorded("lsf/bqueues-w.txt"))
    assert [p["name"] for p in await adapter.partitions()] == [
        "owners",
        "priority",
        "normal",
        "idle",
    ]
    tools.answer("bjobs", recorded("lsf/bjobs-no-job-found.txt"), rc=255, keep=True)
    with pytest.raises(AdapterError, match="one worker per job"):
        await adapter.submit(spec_of(tmp_path / "gang", ("true",), workers=2))


def test_bjobs_records_and_cpu_times_are_read() -> None:
    assert parse_records(recorded("lsf/bjobs-no-job-found.txt")) == []
    (record,) = parse_records(recorded("lsf/bjobs-not-found.json"))
    assert record["ERROR"] == "Job <7311> is not found"
    assert cpu_seconds("00:01:05") == 65.0 and cpu_seconds("0.4 second(s)") == 0.4
    assert cpu_seconds("") is None
    with pytest.raises(ValueError):
        parse_records("bjobs: LSF is down")
