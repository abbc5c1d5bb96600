"""The contract every scheduler adapter keeps (issue 12, item 3; docs/adapters.md), run against
each adapter Apportion ships — ``local`` on this machine, ``slurm`` against the real Slurm of
``scripts/slurm_up.sh``, ``sge`` against the real Son of Grid Engine of ``scripts/sge_up.sh``
(its jobs as the job user: SGE runs no job of root's) — with the same cases: a job submitted is tagged so that a new adapter
(a restarted server) finds it; a poll follows it to its end, its exit code deciding completed
or failed; a cancel stops it; its output is read back whole, in pieces, by byte offsets; its
usage is seed 002's document; its argv arrives verbatim. A plugin's adapter can run the same
suite by adding itself to :data:`BACKENDS`' pattern.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from apportion.adapters.base import (
    Adapter,
    BackendState,
    BackendStatus,
    ClosingAdapter,
    JobSpec,
    RunAs,
    WorkerSpec,
)
from apportion.adapters.local.adapter import LocalAdapter
from apportion.adapters.sge.adapter import SgeAdapter
from apportion.adapters.slurm.adapter import SlurmAdapter
from apportion.jobs.identity import python_for_jobs
from tests import sge_env, slurm_env

slurm = slurm_env.slurm
sge = sge_env.sge


@dataclass
class Backend:
    """An adapter under test (``adapter``), how to make another instance of it — a restarted
    server's — and a spec of a one-worker job running ``argv`` on it."""

    adapter: Adapter
    restarted: Callable[[], Adapter]
    spec: Callable[[tuple[str, ...]], JobSpec]


@dataclass(frozen=True)
class Cluster:
    """Where a backend's one-worker jobs go: its scheduler document, the node, the directory
    each job's files go in (``out(job id)``) and whom it runs as."""

    scheduler: dict[str, str]
    node: str
    out: Callable[[str], Path]
    run_as: RunAs | None = None

    def spec(self, argv: tuple[str, ...]) -> JobSpec:
        job_id = f"c-{uuid.uuid4().hex[:12]}"
        out = self.out(job_id)
        return JobSpec(
            job_id=job_id,
            name="contract",
            command=argv,
            cluster_id=f"{self.scheduler['type']}-local",
            scheduler=self.scheduler,
            workers=(WorkerSpec(index=0, node_id=self.node, gpus=()),),
            output_dir=out,
            working_dir=str(out) if self.run_as is not None else None,
            run_as=self.run_as,
        )


def traversable_tmp() -> Path:
    """A new directory in /tmp that any user may traverse (0711)."""
    outer = Path(tempfile.mkdtemp(prefix="apportion-sge-contract-"))
    outer.chmod(0o711)
    return outer


def users_dir(outer: Path, run_as: RunAs) -> Callable[[str], Path]:
    """Each job's directory in ``outer``, the job user's (0700): the job user cannot reach
    root's ``tmp_path``."""

    def out(job_id: str) -> Path:
        path = outer / job_id
        path.mkdir(mode=0o700)
        os.chown(path, run_as.uid, run_as.gid)
        return path

    return out


BACKENDS = ["local", "slurm", "sge"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each adapter in turn; every job a test submitted through it is cancelled afterwards
    (by its id)."""
    made: Callable[[], Adapter]
    in_tmp = tmp_path.joinpath
    if request.param == "local":
        made = lambda: LocalAdapter(grace_seconds=0.5)  # noqa: E731
        cluster = Cluster({"type": "local"}, "localhost", in_tmp)
    elif request.param == "slurm":
        nodes: slurm_env.SlurmCluster = request.getfixturevalue("slurm")
        made = SlurmAdapter
        cluster = Cluster({"type": "slurm", "partition": nodes.partition}, nodes.nodes[0], in_tmp)
    else:
        cell: sge_env.SgeCell = request.getfixturevalue("sge")
        made = lambda: SgeAdapter(python=PY)  # noqa: E731
        outer = traversable_tmp()
        request.addfinalizer(lambda: shutil.rmtree(outer, ignore_errors=True))
        cluster = Cluster({"type": "sge"}, cell.host, users_dir(outer, cell.run_as), cell.run_as)
    instances: list[Adapter] = []

    def making() -> Adapter:  # every instance is closed afterwards (the local one's executor)
        instances.append(made())
        return instances[-1]

    adapter = making()
    started: list[tuple[JobSpec, str]] = []
    submit = adapter.submit

    async def tracking(job_spec: JobSpec) -> str:
        job = await submit(job_spec)
        started.append((job_spec, job))
        return job

    adapter.submit = tracking  # type: ignore[method-assign]
    yield Backend(adapter, making, cluster.spec)
    for job_spec, job in started:
        await adapter.cancel(job_spec, job)
    for instance in instances:
        if isinstance(instance, ClosingAdapter):
            await instance.close()


PY = python_for_jobs()  # an interpreter the job user can run too (SGE's jobs are theirs)


async def until_finished(adapter: Adapter, spec: JobSpec, job: str) -> BackendStatus:
    deadline = time.monotonic() + 60
    while True:
        status = await adapter.poll(spec, job)
        if status.state.finished or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(("code", "state"), [(0, BackendState.COMPLETED), (3, BackendState.FAILED)])
async def test_a_job_is_followed_to_its_end_and_its_exit_code_decides(
    backend: Backend, code: int, state: BackendState
) -> None:
    adapter = backend.adapter
    spec = backend.spec((PY, "-c", f"import sys; sys.exit({code})"))
    job = await adapter.submit(spec)
    status = await until_finished(adapter, spec, job)
    assert status.state is state and status.return_code == code
    assert status.exit_codes == (code,)  # its one worker's


async def test_a_restarted_server_finds_a_submitted_job(backend: Backend) -> None:
    spec = backend.spec((PY, "-c", "import time; time.sleep(300)"))
    never = backend.spec((PY, "-c", "pass"))
    job = await backend.adapter.submit(spec)
    again = backend.restarted()  # another instance: nothing shared in memory
    assert await again.find(spec) == job
    assert await again.find(never) is None  # never submitted: not found


async def test_a_cancel_stops_a_running_job(backend: Backend) -> None:
    adapter = backend.adapter
    spec = backend.spec((PY, "-c", "import time; time.sleep(300)"))
    job = await adapter.submit(spec)
    deadline = time.monotonic() + 60
    while (await adapter.poll(spec, job)).state is not BackendState.RUNNING:
        assert time.monotonic() < deadline, "the job never ran"
        await asyncio.sleep(0.1)
    await adapter.cancel(spec, job)
    status = await until_finished(adapter, spec, job)
    assert status.state is BackendState.CANCELLED


async def test_output_is_read_back_whole_by_byte_offsets(backend: Backend) -> None:
    adapter = backend.adapter
    text = "".join(f"line {i} é\n" for i in range(200))
    spec = backend.spec((PY, "-c", f"import sys; sys.stdout.write({text!r})"))
    job = await adapter.submit(spec)
    await until_finished(adapter, spec, job)
    pieces, offset = [], 0
    for _ in range(1000):
        chunk = await adapter.logs(spec, job, offset=offset, limit=333)
        pieces.append(chunk.text)
        offset = chunk.offset
        if chunk.complete:
            break
    assert "".join(pieces) == text
    assert offset == chunk.size == len(text.encode())


async def test_argv_arrives_verbatim_and_usage_is_seed_002s_document(backend: Backend) -> None:
    adapter = backend.adapter
    argv = ("a b", "$HOME", "'quoted'", ";", "ü")
    spec = backend.spec((PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *argv))
    job = await adapter.submit(spec)
    await until_finished(adapter, spec, job)
    assert (await adapter.logs(spec, job)).text.strip() == json.dumps(list(argv))
    usage = await adapter.usage(spec, job)
    assert {"cpuSeconds", "maxTotalMemory", "timeInstant"} <= set(usage)
