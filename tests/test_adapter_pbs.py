"""The ``pbs`` adapter against recorded outputs of Torque's commands (issue 12, item 4).

No PBS server can be installed on this machine, so these tests are not against a real PBS:
stand-in ``qsub``/``qstat``/``qdel`` executables (tests/recorded_cli.py) answer with outputs
the real commands printed (tests/data/pbs/) and write down the argv they were given. What is
real: the adapter's commands run as separate programs with argv lists, the files it writes for
the job, and the batch launcher, which these tests run as PBS's execution host would (it runs
the job's command and records how it ended).
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
from apportion.adapters.pbs.adapter import PbsAdapter
from apportion.adapters.pbs.parse import parse_qstat_full, variables
from tests.recorded_cli import RecordedTools, recorded

RUN = "5d0e4a9c1b7f4e2a8c3d6b9a0e1f2c3d"  # the job of the recordings
JOB = "4242.pbs-head.example.org"


@pytest.fixture
def tools(tmp_path: Path) -> RecordedTools:
    return RecordedTools(tmp_path / "pbs", ("qsub", "qstat", "qdel", "pbsnodes"))


def spec_of(
    out: Path, argv: tuple[str, ...], *, flavor: str = "torque", workers: int = 1
) -> JobSpec:
    return JobSpec(
        job_id=RUN,
        name="train; rm -rf /",  # a name PBS must never see as words of a command
        command=argv,
        cluster_id="pbs-cluster",
        scheduler={"type": "pbs", "flavor": flavor},
        workers=tuple(
            WorkerSpec(index=i, node_id="gpu-node-1", gpus=("0", "1"), vcpus=4, memory_mb=2048)
            for i in range(workers)
        ),
        output_dir=out,
        working_dir=str(out),
        walltime_seconds=60.5,
    )


def run_as_pbs_would(out: Path) -> None:
    """What PBS's execution host does with the job: run its batch script with PBS_JOBID set,
    its output and errors into the ``-o`` file (``-j oe``)."""
    env = {**os.environ, "PBS_JOBID": JOB}
    with (out / "output.log").open("wb") as log:
        subprocess.run(
            ["/bin/sh", str(out / "pbs-job.sh")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=60,
        )


async def test_a_job_is_submitted_as_argv_found_followed_and_its_exit_code_kept(
    tools: RecordedTools, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = PbsAdapter(tools=tools.paths, python=sys.executable)
    argv = (sys.executable, "-c", "import sys; print('hello; $(id)'); sys.exit(3)")
    spec = spec_of(out, argv)
    tools.answer("qstat", "", when="-f", keep=False)  # find: nothing of it yet
    tools.answer("qsub", recorded("pbs/qsub.txt"))
    assert await adapter.submit(spec) == JOB
    (qsub,) = tools.calls("qsub")
    script = str(out / "pbs-job.sh")
    assert qsub == [
        "-N", "train--rm--rf--", "-o", str(out / "output.log"), "-j", "oe",
        "-v", f"APPORTION_RUN_ID={RUN}", "-l", "walltime=00:01:01",
        "-l", "nodes=gpu-node-1:ppn=4:gpus=2,mem=2048mb", script,
    ]  # fmt: skip
    text = await asyncio.to_thread(Path(script).read_text)
    assert "hello" not in text and "rm -rf" not in text  # no word of the user's in the script
    launch = json.loads((out / "pbs-launch.json").read_text())
    assert launch["argv"] == list(argv) and launch["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"

    # a restarted server finds it by its tag in qstat -f's Variable_List
    tools.answer("qstat", recorded("pbs/qstat-f-all.txt"))
    assert await PbsAdapter(tools=tools.paths).find(spec) == JOB

    tools.answer("qstat", recorded("pbs/qstat-f-queued.txt"), when=JOB)
    assert (await adapter.poll(spec, JOB)).state is BackendState.PENDING
    tools.answer("qstat", recorded("pbs/qstat-f-running.txt"), when=JOB)
    assert (await adapter.poll(spec, JOB)).state is BackendState.RUNNING

    await asyncio.to_thread(run_as_pbs_would, out)  # the job runs, and ends
    tools.answer("qstat", stderr=recorded("pbs/qstat-unknown.txt"), rc=153, when=JOB)
    status = await adapter.poll(spec, JOB)
    assert (status.state, status.return_code, status.exit_codes) == (
        BackendState.FAILED,
        3,
        (3,),
    )
    assert await adapter.find(spec) == JOB  # recorded by the launcher when it started
    tools.answer("qstat", stderr=recorded("pbs/qstat-unknown.txt"), rc=153, keep=True)
    chunk = await adapter.logs(spec, JOB)
    assert (chunk.text, chunk.complete) == ("hello; $(id)\n", True)


async def test_without_the_launchers_record_pbs_exit_status_decides(
    tools: RecordedTools, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = PbsAdapter(tools=tools.paths)
    spec = spec_of(out, ("true",))
    tools.answer("qstat", recorded("pbs/qstat-f-completed.txt"), when=JOB)
    status = await adapter.poll(spec, JOB)  # exit_status 271: Torque's 256 + SIGTERM
    assert (status.state, status.return_code) == (BackendState.FAILED, 143)
    assert status.reason is not None and "exit_status" in status.reason

    tools.answer("qstat", recorded("pbs/qstat-f-running.txt"), when=JOB)
    usage = await adapter.usage(spec, JOB)
    assert (usage["cpuSeconds"], usage["maxTotalMemory"]) == (65.0, 2.0)

    tools.answer("qstat", stderr="Connection refused\nqstat: cannot connect to server", rc=111)
    with pytest.raises(AdapterError) as unreachable:
        await adapter.poll(spec, JOB)  # not "ended": PBS could not be asked
    assert unreachable.value.retryable


async def test_cancel_is_qdel_and_reads_cancelled(tools: RecordedTools, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = PbsAdapter(tools=tools.paths)
    spec = spec_of(out, ("sleep", "300"))
    tools.answer("qdel", "")
    await adapter.cancel(spec, JOB)
    assert tools.calls("qdel") == [[JOB]]
    tools.answer("qstat", stderr=recorded("pbs/qstat-unknown.txt"), rc=153, when=JOB)
    status = await adapter.poll(spec, JOB)
    assert status.state is BackendState.CANCELLED and status.reason == "cancelled (qdel)"
    with pytest.raises(AdapterError):
        await adapter.cancel(spec, "4242; rm -rf /")  # not a PBS job id: never passed on


async def test_openpbs_resources_queues_and_what_is_refused(
    tools: RecordedTools, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    adapter = PbsAdapter(tools=tools.paths, python=sys.executable)
    tools.answer("qstat", "", when="-f")
    tools.answer("qsub", recorded("pbs/qsub.txt"))
    await adapter.submit(spec_of(out, ("true",), flavor="openpbs"))
    (qsub,) = tools.calls("qsub")
    assert qsub[qsub.index("-l", qsub.index("-l") + 1) + 1] == (
        "select=1:host=gpu-node-1:ncpus=4:ngpus=2:mem=2048mb"
    )
    tools.answer("qstat", recorded("pbs/qstat-Q.txt"), when="-Q")
    assert [p["name"] for p in await adapter.partitions()] == ["batch", "gpu"]
    tools.answer("qstat", "", when="-f", keep=True)
    with pytest.raises(AdapterError, match="one worker per job"):
        await adapter.submit(spec_of(tmp_path / "gang", ("true",), workers=2))
    with pytest.raises(AdapterError, match="no PBS flavor"):
        await adapter.submit(spec_of(tmp_path / "x", ("true",), flavor="pbspro9"))


def test_qstat_f_blocks_and_their_continued_values_are_read() -> None:
    jobs = parse_qstat_full(recorded("pbs/qstat-f-all.txt"))
    assert [j["job_id"] for j in jobs] == ["4241.pbs-head.example.org", JOB]
    ours = jobs[1]
    assert ours["Output_Path"].endswith(f"/.pbs/{RUN}/output.log")  # continued after a tab
    assert " -j oe -v " in ours["submit_args"]  # a space kept where the line was cut
    assert variables(ours)["APPORTION_RUN_ID"] == RUN
    assert variables(ours)["PBS_O_HOST"] == "pbs-head.example.org"
