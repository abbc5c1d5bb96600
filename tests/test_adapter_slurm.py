"""The slurm adapter against the real single-host Slurm of scripts/slurm_up.sh (see slurm_env.py).

Each test submits real batch jobs through :class:`SlurmAdapter` and reads what the job printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import stat
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    RunAs,
    WorkerSpec,
)
from apportion.adapters.distributed import rendezvous_port
from apportion.adapters.slurm.adapter import SlurmAdapter
from apportion.adapters.slurm.script import job_layout, write_script
from apportion.registry.documents.cluster import validate_cluster_document
from tests import slurm_env
from tests.slurm_env import SlurmCluster
from tests.test_torchrun_env import RENDEZVOUS

slurm = slurm_env.slurm  # the session fixture: a real Slurm, or skip (fail under CI=true)

PRINT_ENV = (
    "import json, os, sys; print(json.dumps({k: os.environ.get(k) for k in ("
    "'SLURMD_NODENAME', 'CUDA_VISIBLE_DEVICES', 'APPORTION_JOB_ID', 'APPORTION_WORKER_INDEX', "
    "'APPORTION_NUM_WORKERS', 'FROM_SPEC')}))"
)


def make_spec(
    tmp_path: Path,
    command: tuple[str, ...],
    workers: tuple[WorkerSpec, ...],
    *,
    scheduler: dict[str, object] | None = None,
    **kw: object,
) -> JobSpec:
    job_id = f"t-{uuid.uuid4().hex[:12]}"
    return JobSpec(
        job_id=job_id,
        name="test",
        command=command,
        cluster_id="slurm-local",
        scheduler=scheduler if scheduler is not None else {"type": "slurm", "partition": "gpu"},
        workers=workers,
        output_dir=tmp_path / job_id,
        **kw,  # type: ignore[arg-type]
    )


async def wait_for(
    adapter: SlurmAdapter, spec: JobSpec, job: str, done: set[BackendState], limit: float = 30
) -> BackendStatus:
    deadline = time.monotonic() + limit
    while True:
        status = await adapter.poll(spec, job)
        if status.state in done or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def run_to_end(adapter: SlurmAdapter, spec: JobSpec) -> tuple[str, BackendStatus, str]:
    job = await adapter.submit(spec)
    status = await wait_for(adapter, spec, job, {s for s in BackendState if s.finished})
    assert status.state.finished, status
    return job, status, (await adapter.logs(spec, job)).text


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def json_lines(text: str) -> list[dict[str, str | None]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_two_gpu_job_lands_on_the_chosen_node(slurm: SlurmCluster, tmp_path: Path) -> None:
    node = slurm.nodes[1]
    spec = make_spec(
        tmp_path,
        ("python3", "-c", PRINT_ENV),
        (WorkerSpec(0, node, ("0", "1"), vcpus=2, memory_mb=256),),
        env={"FROM_SPEC": "yes"},
    )
    _, status, log = await run_to_end(SlurmAdapter(), spec)
    assert status.state is BackendState.COMPLETED and status.return_code == 0
    (line,) = json_lines(log)
    assert line["SLURMD_NODENAME"] == node
    assert len((line["CUDA_VISIBLE_DEVICES"] or "").split(",")) == 2
    assert line["APPORTION_JOB_ID"] == spec.job_id
    assert (line["APPORTION_WORKER_INDEX"], line["APPORTION_NUM_WORKERS"]) == ("0", "1")
    assert line["FROM_SPEC"] == "yes"
    assert status.started_at is not None and status.ended_at is not None


async def test_gang_of_two_workers_on_two_nodes(slurm: SlurmCluster, tmp_path: Path) -> None:
    # worker 0 on the last node, worker 1 on the first: the index follows the node, not the order
    first, last = slurm.nodes[0], slurm.nodes[-1]
    spec = make_spec(
        tmp_path,
        ("python3", "-c", PRINT_ENV),
        (WorkerSpec(0, last, ("0",)), WorkerSpec(1, first, ("0",))),
    )
    _, status, log = await run_to_end(SlurmAdapter(), spec)
    assert status.state is BackendState.COMPLETED
    seen = {(w["SLURMD_NODENAME"], w["APPORTION_WORKER_INDEX"]) for w in json_lines(log)}
    assert seen == {(last, "0"), (first, "1")}
    assert all(w["APPORTION_NUM_WORKERS"] == "2" for w in json_lines(log))
    assert all(len((w["CUDA_VISIBLE_DEVICES"] or "").split(",")) == 1 for w in json_lines(log))


async def test_a_gang_meets_at_the_rendezvous_torchrun_would_use(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    # worker 0 on the last node: MASTER_ADDR is where Slurm reaches that node (its NodeAddr)
    first, last = slurm.nodes[0], slurm.nodes[-1]
    spec = make_spec(
        tmp_path,
        ("python3", "-c", RENDEZVOUS),
        (WorkerSpec(0, last, ("0",)), WorkerSpec(1, first, ("0",))),
    )
    _, status, log = await run_to_end(SlurmAdapter(), spec)
    assert status.state is BackendState.COMPLETED, (status, log)
    printed = {
        line["env"]["RANK"]: line for line in map(json.loads, log.splitlines()) if "env" in line
    }
    assert [m["RANK"] for m in printed["0"]["met"]] == ["1"]  # rank 1 reached rank 0
    for rank in ("0", "1"):
        env = printed[rank]["env"]
        assert (env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("2", "0", "1")
        assert env["MASTER_ADDR"] == "127.0.0.1"  # the test cluster's NodeAddr of every node
        assert env["MASTER_PORT"] == str(rendezvous_port(spec.run_id))


async def test_two_workers_on_one_node_split_its_gpus(slurm: SlurmCluster, tmp_path: Path) -> None:
    node = slurm.nodes[2]
    spec = make_spec(
        tmp_path,
        ("python3", "-c", PRINT_ENV),
        (WorkerSpec(0, node, ("0", "1")), WorkerSpec(1, node, ("2", "3"))),
    )
    _, status, log = await run_to_end(SlurmAdapter(), spec)
    assert status.state is BackendState.COMPLETED
    lines = json_lines(log)
    cvds = [set((w["CUDA_VISIBLE_DEVICES"] or "").split(",")) for w in lines]
    assert sorted(w["APPORTION_WORKER_INDEX"] or "" for w in lines) == ["0", "1"]
    assert all(len(c) == 2 for c in cvds) and not cvds[0] & cvds[1]  # 4 GPUs split 2 + 2


async def test_cancel_stops_a_sleeping_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        ("sh", "-c", "echo pid=$$; exec sleep 300"),
        (WorkerSpec(0, slurm.nodes[0], ("0",)),),
    )
    adapter = SlurmAdapter(grace_seconds=10)
    job = await adapter.submit(spec)
    assert (
        await wait_for(adapter, spec, job, {BackendState.RUNNING})
    ).state is BackendState.RUNNING
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the job prints its pid once it runs
        text = (await adapter.logs(spec, job)).text
        if "pid=" in text:
            break
        await asyncio.sleep(0.1)
    assert "pid=" in text, text
    pid = int(text.split("pid=")[1].split()[0])
    assert alive(pid)
    await adapter.cancel(spec, job)
    status = await adapter.poll(spec, job)
    assert status.state is BackendState.CANCELLED
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        await asyncio.sleep(0.2)
    assert not alive(pid), "the job's process survived scancel"
    await adapter.cancel(spec, job)  # idempotent
    assert (await adapter.poll(spec, job)).state is BackendState.CANCELLED


async def test_concurrent_polls_share_one_squeue_listing(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ("sleep", "30"), (WorkerSpec(0, slurm.nodes[0], ("0",)),))
    adapter = SlurmAdapter(grace_seconds=10)
    job = await adapter.submit(spec)
    calls: list[str] = []
    run = adapter._run

    async def counting(tool: str, *args: str, check: bool = True) -> tuple[int, str, str]:
        calls.append(tool)
        return await run(tool, *args, check=check)

    adapter._run = counting  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.3)  # older than any listing the submit may have left
        statuses = await asyncio.gather(*(adapter.poll(spec, job) for _ in range(8)))
        assert calls.count("squeue") == 1  # eight polls, one listing
        assert len({s.state for s in statuses}) == 1
        assert statuses[0].state in (BackendState.PENDING, BackendState.RUNNING)
        await asyncio.sleep(0.3)  # a listing is reused only briefly
        await adapter.poll(spec, job)
        assert calls.count("squeue") == 2
    finally:
        await adapter.cancel(spec, job)


async def test_exit_3_is_failed_with_return_code_3(slurm: SlurmCluster, tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, ("sh", "-c", "echo bye; exit 3"), (WorkerSpec(0, slurm.nodes[0], ()),)
    )
    job, status, log = await run_to_end(SlurmAdapter(), spec)
    assert (status.state, status.return_code) == (BackendState.FAILED, 3)
    assert status.reason == "exit code 3"
    assert log == "bye\n"
    chunk = await SlurmAdapter().logs(spec, job, offset=2)  # tail from byte 2 of "bye\n"
    assert (chunk.text, chunk.offset, chunk.complete) == ("e\n", 4, True)


async def test_finished_job_read_from_scontrol_when_squeue_forgot_it(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, ("sh", "-c", "exit 3"), (WorkerSpec(0, slurm.nodes[0], ()),))
    job, _, _ = await run_to_end(SlurmAdapter(), spec)
    empty_squeue = tmp_path / "squeue"  # a squeue that lists no jobs, as after MinJobAge
    empty_squeue.write_text('#!/bin/sh\necho \'{"meta": {}, "errors": [], "jobs": []}\'\n')
    empty_squeue.chmod(0o755)
    adapter = SlurmAdapter(binaries={"squeue": str(empty_squeue)})
    status = await adapter.poll(spec, job)
    assert (status.state, status.return_code) == (BackendState.FAILED, 3)
    assert adapter.accounting is False  # sacct said "accounting storage is disabled"
    gone = await adapter.poll(spec, "999999")
    assert gone.state is BackendState.UNKNOWN and gone.reason is not None


async def test_find_after_restart_returns_the_same_id(slurm: SlurmCluster, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ("true",), (WorkerSpec(0, slurm.nodes[0], ()),))
    job = await SlurmAdapter().submit(spec)
    assert await SlurmAdapter().find(spec) == job  # a new instance, as after a crash
    other = make_spec(tmp_path, ("true",), (WorkerSpec(0, slurm.nodes[0], ()),))
    assert await SlurmAdapter().find(other) is None  # never submitted


async def test_argv_arrives_verbatim(slurm: SlurmCluster, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    hostile = [
        "a b",
        "it's",
        '"dq"',
        f"$(touch {pwned})",
        f"; touch {pwned}",
        "`id`",
        "\\n",
        "",
        "*",
    ]
    spec = make_spec(
        tmp_path,
        ("python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *hostile),
        (WorkerSpec(0, slurm.nodes[0], ()),),
        working_dir=str(tmp_path),
    )
    _, status, log = await run_to_end(SlurmAdapter(), spec)
    assert status.state is BackendState.COMPLETED
    assert json.loads(log.strip()) == hostile
    assert not pwned.exists()


async def test_walltime_becomes_the_slurm_time_limit(slurm: SlurmCluster, tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, ("sleep", "300"), (WorkerSpec(0, slurm.nodes[0], ()),), walltime_seconds=90
    )
    adapter = SlurmAdapter()
    job = await adapter.submit(spec)
    try:
        proc = await asyncio.create_subprocess_exec(
            "scontrol", "show", "job", "-o", job, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        # 90 s rounds up to Slurm's minute granularity: 2 minutes
        assert "TimeLimit=00:02:00" in out.decode()
    finally:
        await adapter.cancel(spec, job)


async def test_discovery_of_nodes_and_gpus(slurm: SlurmCluster) -> None:
    nodes = await SlurmAdapter().discover({"type": "slurm", "partition": "gpu"})
    assert [n["id"] for n in nodes] == list(slurm.nodes)
    for n in nodes:
        assert n["gpus"]["count"] == 4 and len(n["gpus"]["gpus"]) == 4
        assert n["vcpus"]["count"] == 8 and n["memory"] == 8000
    doc = validate_cluster_document(
        {
            "id": "slurm-local",
            "nodes": {"nodeData": nodes},
            "config": {"scheduler": {"type": "slurm"}},
        }
    )
    assert doc["gpus"]["count"] == 4 * len(slurm.nodes)
    with_mem = await SlurmAdapter().discover({"partition": "gpu", "gpu_memory_mb": 16384})
    assert with_mem[0]["gpus"]["memory"] == 4 * 16384


async def test_partitions(slurm: SlurmCluster) -> None:
    parts = {p["name"]: p for p in await SlurmAdapter().partitions()}
    assert parts["gpu"]["totalGpus"] == 4 * len(slurm.nodes)
    assert parts["gpu"]["totalNodes"] == len(slurm.nodes) and parts["cpu"]["default"] is True


# -- refusals: nothing reaches Slurm (no fixture needed: they must refuse before running anything) --


@pytest.mark.parametrize(
    ("scheduler", "name", "node", "needle"),
    [
        ({"partition": "gpu\n#SBATCH --uid=0"}, "ok", "n1", "partition"),
        ({"partition": "gpu"}, "two words", "n1", "job name"),
        ({"partition": "gpu"}, "ok", "n1\n", "node name"),
        ({"partition": "gpu", "account": "a,b"}, "ok", "n1", "account"),
    ],
)
async def test_bad_names_are_refused_before_anything_runs(
    tmp_path: Path, scheduler: dict[str, object], name: str, node: str, needle: str
) -> None:
    marker = tmp_path / "sbatch-ran"
    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\necho 1\n")
    fake.chmod(0o755)
    spec = make_spec(tmp_path, ("true",), (WorkerSpec(0, node, ()),), scheduler=scheduler)
    spec = replace(spec, name=name)
    with pytest.raises(AdapterError, match=needle):
        await SlurmAdapter(binaries={"sbatch": str(fake)}).submit(spec)
    assert not marker.exists() and not spec.output_dir.exists()


def test_uneven_workers_are_refused(tmp_path: Path) -> None:
    # 2 workers on n1 and 1 on n2 cannot be one --ntasks-per-node job
    uneven = (WorkerSpec(0, "n1", ("0",)), WorkerSpec(1, "n1", ("1",)), WorkerSpec(2, "n2", ("0",)))
    with pytest.raises(AdapterError, match="workers per node"):
        job_layout(make_spec(tmp_path, ("true",), uneven))
    mixed = (WorkerSpec(0, "n1", ("0",)), WorkerSpec(1, "n2", ("0", "1")))
    with pytest.raises(AdapterError, match="same GPUs"):
        job_layout(make_spec(tmp_path, ("true",), mixed))
    layout = job_layout(make_spec(tmp_path, ("true",), (WorkerSpec(3, "n2", ("0",)),)))
    assert (layout.nodes, layout.per_node, layout.by_node) == (("n2",), 1, {"n2": [3]})


def test_unknown_tool_name_is_refused() -> None:
    with pytest.raises(ValueError, match="srun"):
        SlurmAdapter(binaries={"srun": "/bin/true"})


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("", "skip"), ("false", "skip")])
def test_missing_slurm_skips_but_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    monkeypatch.setattr(slurm_env, "_ready_nodes", lambda: ())
    monkeypatch.setattr(slurm_env, "_start", lambda: "the Slurm binaries are not installed")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match=r"Slurm is not installed: run scripts/slurm_up\.sh"):
        slurm_env.require_slurm()


async def test_a_hanging_slurm_command_times_out(tmp_path: Path) -> None:
    hang = tmp_path / "squeue"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    adapter = SlurmAdapter(binaries={"squeue": str(hang)}, command_timeout=0.5)
    spec = make_spec(tmp_path, ("true",), (WorkerSpec(0, "n1", ()),))
    started = time.monotonic()
    with pytest.raises(AdapterError, match=r"did not answer within 0\.5 s") as err:
        await adapter.poll(spec, "1")
    assert err.value.retryable and time.monotonic() - started < 15  # stopped, not the 30 s


def test_a_job_with_a_user_is_submitted_as_that_user_and_its_files_are_theirs(
    tmp_path: Path,
) -> None:
    """Root submits with --uid/--gid (Slurm 22.05, root only); the launch file — read by the
    launcher as that user — and the script are 0600 and the user's. Before, sbatch ran the job
    as the server (root) and both files were world-readable."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # root: a real other user, so the chown is seen
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam("apportion-jobs")
            uid, gid = entry.pw_uid, entry.pw_gid
    me = RunAs("someone", uid, gid, (gid,), "/nonexistent")
    spec = make_spec(tmp_path, ("true",), (WorkerSpec(0, "n1", ()),), run_as=me)
    adapter = SlurmAdapter()
    layout = job_layout(spec)
    args = adapter._sbatch_args(spec, layout)
    assert f"--uid={me.uid}" in args and f"--gid={me.gid}" in args
    script = write_script(spec, layout, "python3")
    for path in (script, spec.output_dir / "slurm-launch.json"):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (
            me.uid,
            me.gid,
        )
    without = make_spec(tmp_path, ("true",), (WorkerSpec(0, "n1", ()),))
    assert not [
        a for a in adapter._sbatch_args(without, layout) if a.startswith(("--uid", "--gid"))
    ]
