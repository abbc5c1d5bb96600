"""The ``local`` adapter against real processes: environment, argv, exit codes, gang stop, cancel,
walltime, logs, usage, and survival of a SIGKILLed server (a real process that submits, then dies).

Every process a test starts is ended by the ``adapter`` fixture (cancel with a short grace) or by
PID; nothing else is ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    WorkerSpec,
)
from apportion.adapters.local import executor as ex
from apportion.adapters.local.adapter import LocalAdapter
from apportion.adapters.local.launch import start_request
from apportion.adapters.local.workers import read_workers
from tests.jobs_helpers import gone, job_user, needs_job_user

PY = sys.executable
GRACE = 0.5


def make_spec(
    tmp_path: Path,
    *commands: str,
    job_id: str = "job-1",
    gpus: tuple[tuple[str, ...], ...] = (),
    **fields: Any,
) -> JobSpec:
    """A job whose worker i runs ``python -c commands[i]`` (one command → all workers run it)."""
    count = max(len(commands), len(gpus), 1)
    code = (
        commands[0]
        if len(commands) == 1
        else "import os, sys\n"
        + "\n".join(
            f"if os.environ['APPORTION_WORKER_INDEX'] == '{i}':\n" + textwrap.indent(c, "    ")
            for i, c in enumerate(commands)
        )
    )
    workers = tuple(
        WorkerSpec(index=i, node_id="localhost", gpus=gpus[i] if i < len(gpus) else ())
        for i in range(count)
    )
    values: dict[str, Any] = {
        "job_id": job_id,
        "name": "test",
        "command": (PY, "-c", code),
        "cluster_id": "local",
        "scheduler": {"type": "local"},
        "workers": workers,
        "output_dir": tmp_path / job_id,
    }
    values.update(fields)
    return JobSpec(**values)


@pytest.fixture
async def adapter() -> AsyncIterator[LocalAdapter]:
    """An adapter whose jobs are all ended (cancelled with a short grace) after the test."""
    adapter = LocalAdapter(grace_seconds=GRACE)
    submitted: list[JobSpec] = []
    original = adapter.submit

    async def tracking_submit(spec: JobSpec) -> str:
        submitted.append(spec)
        return await original(spec)

    adapter.submit = tracking_submit  # type: ignore[method-assign]
    yield adapter
    for spec in submitted:
        await adapter.cancel(spec, adapter.scheduler_id(spec))
    await adapter.close()  # its executors exit: they watch no command anymore


async def wait_finished(
    adapter: LocalAdapter, spec: JobSpec, sid: str, within: float = 30.0
) -> BackendStatus:
    deadline = time.monotonic() + within
    while True:
        status = await adapter.poll(spec, sid)
        if status.state.finished or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.02)


def contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def wait_text(path: Path, text: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(contains, path, text):
        assert time.monotonic() < deadline, f"{path} never contained {text!r}"
        await asyncio.sleep(0.02)


def state(spec: JobSpec, index: int = 0) -> dict[str, Any]:
    value = ex.read_json(ex.state_path(spec.output_dir, index))
    assert value is not None
    return value


# a test run both ways the executor starts a command: spawned as its own user, or by the
# spawner of a job user
BOTH_USERS = pytest.mark.parametrize(
    "as_job_user", [False, True], ids=["executor's user", "a job user"]
)


def by_job_user(spec: JobSpec) -> JobSpec:
    """``spec`` run as the job user (through its spawner), in ``/tmp`` (the user may not enter
    the test's own directories); the test is skipped — failed under CI — without that user."""
    needs_job_user()
    return dataclasses.replace(spec, run_as=job_user(), working_dir="/tmp")


async def wait_gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` is gone within ``within`` seconds (a deadline for a broken
    test, not a timing claim)."""
    for _ in range(int(within / 0.02)):
        if gone(pid):
            return True
        await asyncio.sleep(0.02)
    return gone(pid)


@contextlib.asynccontextmanager
async def own_executor(jobs_dir: Path, *argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """An executor of the test's own for ``jobs_dir``, started by ``argv`` (which ends with
    the executor's file and ``jobs_dir``), once its socket is there; killed if it is still
    running when the block ends (it exits by itself once no command runs and no client is
    connected)."""
    started = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
    )
    try:
        async with asyncio.timeout(30):  # a deadline for a broken test, not a timing assertion
            while not (jobs_dir / ex.SOCKET_NAME).exists():
                assert started.returncode is None, "the executor did not start"
                await asyncio.sleep(0.02)
        yield started
    finally:
        if started.returncode is None:
            started.kill()
            await started.wait()


def gate_code(gate: Path) -> str:
    """Python lines that wait until the test creates ``gate`` (at most 60 s)."""
    return (
        "import os, time\n"
        "end = time.monotonic() + 60\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < end:\n"
        "    time.sleep(0.01)\n"
    )


# ---- environment and argv -----------------------------------------------------------------


async def test_environment_is_minimal_with_gpus_and_apportion_vars(
    adapter: LocalAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPORTION_ADMIN_KEY", "secret-admin-key")
    monkeypatch.setenv("SOME_SERVER_SECRET", "s3cret")
    # the server's own PATH may start under its home (pyenv's shims under /root), which a job's
    # user cannot run: before, jobs got it, and `python` failed with "Permission denied"
    monkeypatch.setenv("PATH", f"/root/.pyenv/shims:{os.environ['PATH']}")
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    spec = make_spec(tmp_path, dump, gpus=(("0", "1"), ()), env={"MY_VAR": "hello world"})
    sid = await adapter.submit(spec)
    assert sid == "local-job-1"
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    envs = [json.loads(ex.stdout_path(spec.output_dir, i).read_text()) for i in (0, 1)]
    for index, env in enumerate(envs):
        assert "APPORTION_ADMIN_KEY" not in env
        assert "SOME_SERVER_SECRET" not in env
        assert env["APPORTION_JOB_ID"] == "job-1"
        assert env["APPORTION_WORKER_INDEX"] == str(index)
        assert env["APPORTION_NUM_WORKERS"] == "2"
        assert env["MY_VAR"] == "hello world"
        assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert envs[0]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert envs[1]["CUDA_VISIBLE_DEVICES"] == ""


async def test_a_jobs_own_path_wins(adapter: LocalAdapter, tmp_path: Path) -> None:
    dump = "import os; print(os.environ['PATH'])"
    spec = make_spec(tmp_path, dump, env={"PATH": "/opt/tools/bin:/usr/bin"})
    sid = await adapter.submit(spec)
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    assert ex.stdout_path(spec.output_dir, 0).read_text().strip() == "/opt/tools/bin:/usr/bin"


async def test_a_command_is_found_in_the_jobs_path_as_execvpe_finds_it(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # the executor spawns a command of its own user itself: it searches the job's PATH (not
    # its own), passing over a file of that name it may not run, as execvpe does
    denied, tools = tmp_path / "denied", tmp_path / "tools"
    for directory, mode in ((denied, 0o644), (tools, 0o755)):
        directory.mkdir()
        tool = directory / "apportion-test-tool"
        tool.write_text(f'#!/bin/sh\necho ran from {directory.name} "$@"\n')
        tool.chmod(mode)
    path = f"{denied}:{tools}:/usr/bin:/bin"
    found = make_spec(tmp_path, "", job_id="job-1", command=("apportion-test-tool", "x y"))
    found = dataclasses.replace(found, env={"PATH": path})
    assert (await wait_finished(adapter, found, await adapter.submit(found))).state is (
        BackendState.COMPLETED
    )
    assert ex.stdout_path(found.output_dir, 0).read_text() == "ran from tools x y\n"
    cases = (
        ("apportion-test-tool", f"{denied}:/usr/bin", 126),
        ("apportion-no-such-tool", path, 127),
    )
    for i, (name, search, code) in enumerate(cases, start=2):
        spec = make_spec(tmp_path, "", job_id=f"job-{i}", command=(name,))
        spec = dataclasses.replace(spec, env={"PATH": search})
        status = await wait_finished(adapter, spec, await adapter.submit(spec))
        assert (status.state, status.return_code) == (BackendState.FAILED, code), status
        assert status.reason is not None and "could not start: [Errno" in status.reason
        assert name in status.reason


async def test_a_working_directory_gone_before_the_start_fails_the_worker(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    gate = tmp_path / "may-exit"
    await adapter.submit(make_spec(tmp_path, gate_code(gate), job_id="job-0"))  # executor up
    spec = make_spec(tmp_path, "print('ran')", job_id="job-1")
    spec.output_dir.mkdir()
    ex.write_json_atomic(spec.output_dir / ex.TAG_FILE, {"attempt": "one"})
    request = start_request(spec, tmp_path / "removed", "one", GRACE)
    (answer,) = await executor_says(tmp_path, json.dumps(request).encode() + b"\n")
    assert answer == {"started": 1}
    recorded = state(spec)
    assert recorded["return_code"] == 126 and recorded["pid"] is None
    assert recorded["reason"] == (
        f"could not start: the job's user cannot enter its working directory"
        f" {tmp_path / 'removed'} (No such file or directory)"
    )
    gate.touch()


async def test_argv_reaches_the_command_verbatim(adapter: LocalAdapter, tmp_path: Path) -> None:
    hostile = ["two words", 'it\'s "quoted"', "$(rm -rf /)", "a;b", "`id`", "*", ""]
    spec = make_spec(
        tmp_path,
        "",
        command=(PY, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *hostile),
    )
    sid = await adapter.submit(spec)
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    assert json.loads(ex.stdout_path(spec.output_dir, 0).read_text()) == hostile


async def test_working_dir_is_the_cwd(adapter: LocalAdapter, tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    spec = make_spec(tmp_path, "import os; print(os.getcwd())", working_dir=str(work))
    sid = await adapter.submit(spec)
    await wait_finished(adapter, spec, sid)
    assert ex.stdout_path(spec.output_dir, 0).read_text().strip() == str(work)


@BOTH_USERS
async def test_a_command_starts_alone_with_default_signals_and_nothing_of_the_executor(
    adapter: LocalAdapter, tmp_path: Path, as_job_user: bool
) -> None:
    """What a command gets, both ways the executor starts one (spawned by the executor for
    its own user, by a job user's spawner for that user): it leads its own session and process
    group, runs as its user, every signal is at its default and none is blocked (not the
    executor's handlers, nor the SIGHUP and SIGPIPE it ignores, nor a SIGQUIT the server was
    started ignoring), its stdin is /dev/null, and it holds no descriptor of the executor's or
    its spawner's (sockets, lock, pidfds, the output file as it was passed)."""
    script = (
        "echo pid $$; cat /proc/self/status; echo fds; ls /proc/$$/fd; echo end;"
        " readlink /proc/$$/fd/0"
    )
    spec = make_spec(tmp_path, "", command=("/bin/sh", "-c", script))
    if as_job_user:
        spec = by_job_user(spec)
    uid = os.geteuid() if spec.run_as is None else spec.run_as.uid
    quit_before = signal.signal(signal.SIGQUIT, signal.SIG_IGN)  # the executor inherits it
    try:
        sid = await adapter.submit(spec)  # this test's executor starts here
    finally:
        signal.signal(signal.SIGQUIT, quit_before)
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    lines = ex.stdout_path(spec.output_dir, 0).read_text().splitlines()
    pid = lines[0].removeprefix("pid ")
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert status["NSsid"].strip() == pid and status["NSpgid"].strip() == pid
    assert status["Uid"].split() == [str(uid)] * 4
    # the signals a program may handle (not the C library's own 32 and 33, which whoever
    # started the tests may ignore and nobody can reset)
    settable = sum(1 << (int(sig) - 1) for sig in signal.valid_signals())
    assert int(status["SigIgn"], 16) & settable == 0, status["SigIgn"]
    assert int(status["SigBlk"], 16) & settable == 0, status["SigBlk"]
    fds = lines[lines.index("fds") + 1 : lines.index("end")]
    assert fds == ["0", "1", "2"]
    assert lines[-1] == "/dev/null"


async def test_a_job_users_commands_come_from_its_spawner_which_its_jobs_cannot_read(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # the executor starts a job user's commands through a spawner that became that user: it
    # is their parent, runs as the user, and cannot be read (nor traced) by them
    script = (
        "echo parent $PPID; grep '^Uid:' /proc/$PPID/status;"
        " if cat /proc/$PPID/environ >/dev/null 2>&1; then echo read; else echo denied; fi"
    )
    spec = by_job_user(make_spec(tmp_path, "", command=("/bin/sh", "-c", script)))
    assert (await wait_finished(adapter, spec, await adapter.submit(spec))).state is (
        BackendState.COMPLETED
    )
    lines = ex.stdout_path(spec.output_dir, 0).read_text().splitlines()
    parent = int(lines[0].removeprefix("parent "))
    assert parent != state(spec)["executor_pid"]
    assert spec.run_as is not None and lines[1].split()[1:] == [str(spec.run_as.uid)] * 4
    assert lines[2] == "denied"


async def test_a_killed_spawner_fails_its_running_jobs_and_the_next_start_makes_another(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # a job user's processes may kill the spawner of that user: its running commands' ends
    # can then not be known — they are stopped and recorded so — and the next job starts
    script = "echo $PPID; exec sleep 60"
    running = by_job_user(
        make_spec(tmp_path, "", job_id="job-1", command=("/bin/sh", "-c", script))
    )
    sid = await adapter.submit(running)
    output = ex.stdout_path(running.output_dir, 0)
    await wait_text(output, "\n")
    spawner = int(output.read_text())
    command = int(state(running)["pid"])
    os.kill(spawner, signal.SIGKILL)  # started by this test's executor
    status = await wait_finished(adapter, running, sid)
    assert status.state is BackendState.FAILED and status.return_code == 128 + 9
    assert "the executor's spawner for its user was killed" in (status.reason or "")
    assert await wait_gone(command)
    after = by_job_user(make_spec(tmp_path, "", job_id="job-2", command=("/bin/true",)))
    assert (await wait_finished(adapter, after, await adapter.submit(after))).state is (
        BackendState.COMPLETED
    )


async def test_a_spawner_its_user_stopped_is_killed_and_the_executor_serves_on(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # a job user's processes may stop (SIGSTOP) the spawner of that user: the executor waits
    # SPAWNER_WAIT for it at most, then kills it — never frozen for everyone's jobs

    def as_user(job_id: str, *command: str) -> JobSpec:
        return by_job_user(make_spec(tmp_path, "", job_id=job_id, command=command))

    running = as_user("job-1", "/bin/sh", "-c", "echo $PPID; exec sleep 60")
    sid = await adapter.submit(running)
    output = ex.stdout_path(running.output_dir, 0)
    await wait_text(output, "\n")
    os.kill(int(output.read_text()), signal.SIGSTOP)  # the spawner, started by this test
    stuck = as_user("job-2", "/bin/true")
    status = await wait_finished(adapter, stuck, await adapter.submit(stuck))
    assert status.state is BackendState.FAILED and status.return_code == 126
    assert "its spawner did not answer within 5 s" in (status.reason or ""), status
    assert "submit the job again" in (status.reason or "")
    assert (await wait_finished(adapter, running, sid)).state is BackendState.FAILED
    mine = make_spec(tmp_path, "print('ran')", job_id="job-3")  # the executor's own user
    assert (await wait_finished(adapter, mine, await adapter.submit(mine))).state is (
        BackendState.COMPLETED
    )
    again = as_user("job-4", "/bin/true")
    assert (await wait_finished(adapter, again, await adapter.submit(again))).state is (
        BackendState.COMPLETED
    )


# ---- exit codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected", "return_code", "reason"),
    [
        ("raise SystemExit(0)", BackendState.COMPLETED, 0, None),
        ("raise SystemExit(3)", BackendState.FAILED, 3, "worker 0 exited with code 3"),
        # killed by signal 9 → 128 + 9 = 137
        (
            "import os; os.kill(os.getpid(), 9)",
            BackendState.FAILED,
            137,
            "worker 0 killed by SIGKILL",
        ),
    ],
)
async def test_exit_code_decides_the_state(
    adapter: LocalAdapter,
    tmp_path: Path,
    code: str,
    expected: BackendState,
    return_code: int,
    reason: str | None,
) -> None:
    spec = make_spec(tmp_path, code)
    sid = await adapter.submit(spec)
    status = await wait_finished(adapter, spec, sid)
    assert (status.state, status.return_code, status.reason) == (expected, return_code, reason)
    assert status.started_at is not None and status.ended_at is not None
    assert status.started_at <= status.ended_at


async def test_missing_program_fails_with_127(adapter: LocalAdapter, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "", command=("/nonexistent/program-xyz", "arg"))
    sid = await adapter.submit(spec)
    status = await wait_finished(adapter, spec, sid)
    assert status.state is BackendState.FAILED
    assert status.return_code == 127
    assert status.reason is not None and "could not start" in status.reason


async def test_one_failing_worker_stops_the_gang(adapter: LocalAdapter, tmp_path: Path) -> None:
    gate = tmp_path / "fail-now"  # worker 1 fails only once worker 0 is up (the test opens it)
    sleeper = "import time; print('up', flush=True); time.sleep(30)"
    failer = gate_code(gate) + "raise SystemExit(3)"
    spec = make_spec(tmp_path, sleeper, failer)
    sid = await adapter.submit(spec)
    await wait_text(ex.stdout_path(spec.output_dir, 0), "up")
    sleeper_pid = state(spec, 0)["pid"]
    gate.touch()
    started = time.monotonic()
    status = await wait_finished(adapter, spec, sid)
    assert time.monotonic() - started < 15  # stopped, not waited out (the sleeper sleeps 30 s)
    assert (status.state, status.return_code) == (BackendState.FAILED, 3)
    assert status.reason == "worker 1 exited with code 3"
    assert state(spec, 0)["stopped_by"] == "gang"
    assert gone(sleeper_pid)


# ---- cancel and walltime ------------------------------------------------------------------


async def test_cancel_stops_a_sleeping_job(adapter: LocalAdapter, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "import time; print('up', flush=True); time.sleep(30)")
    sid = await adapter.submit(spec)
    await wait_text(ex.stdout_path(spec.output_dir, 0), "up")
    pid = state(spec)["pid"]
    assert (await adapter.poll(spec, sid)).state is BackendState.RUNNING
    await adapter.cancel(spec, sid)
    assert gone(pid)
    assert state(spec)["signal"] == signal.SIGTERM  # SIGTERM was enough
    assert (await adapter.poll(spec, sid)).state is BackendState.CANCELLED
    await adapter.cancel(spec, sid)  # idempotent
    assert (await adapter.poll(spec, sid)).state is BackendState.CANCELLED
    assert (await LocalAdapter().poll(spec, sid)).state is BackendState.CANCELLED  # after restart


async def test_cancel_kills_a_command_that_ignores_sigterm(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(30)"
    spec = make_spec(tmp_path, code)
    sid = await adapter.submit(spec)
    await wait_text(ex.stdout_path(spec.output_dir, 0), "up")
    pid = state(spec)["pid"]
    started = time.monotonic()
    await adapter.cancel(spec, sid)
    elapsed = time.monotonic() - started
    assert elapsed >= GRACE  # SIGKILL only after the grace period
    assert gone(pid)
    assert state(spec)["signal"] == signal.SIGKILL
    assert (await adapter.poll(spec, sid)).state is BackendState.CANCELLED


async def test_cancel_of_a_finished_job_changes_nothing(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "pass")
    sid = await adapter.submit(spec)
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    await adapter.cancel(spec, sid)
    assert (await adapter.poll(spec, sid)).state is BackendState.COMPLETED
    assert not (spec.output_dir / ex.CANCEL_FILE).exists()


async def test_cancel_never_signals_a_process_that_is_not_ours(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # A state file naming a live process whose start time does not match (as after pid reuse).
    stranger = await asyncio.create_subprocess_exec(
        PY, "-c", "import time; time.sleep(30)", start_new_session=True
    )
    try:
        spec = make_spec(tmp_path, "pass")
        spec.output_dir.mkdir(parents=True)
        ex.write_json_atomic(spec.output_dir / ex.TAG_FILE, {"job_id": spec.job_id})
        recorded: dict[str, Any] = {"pid": stranger.pid, "pgid": stranger.pid, "ended_at": None}
        recorded |= {"executor_pid": stranger.pid}
        recorded |= {"started_at": time.time() - 3600, "executor_started_at": time.time() - 3600}
        ex.write_json_atomic(ex.state_path(spec.output_dir, 0), recorded)
        await adapter.cancel(spec, adapter.scheduler_id(spec))
        with pytest.raises(TimeoutError):  # still running 0.3 s later: it was not signalled
            await asyncio.wait_for(stranger.wait(), 0.3)
        status = await adapter.poll(spec, adapter.scheduler_id(spec))
        assert status.state is BackendState.FAILED  # not ours and no exit recorded: lost
        assert status.reason is not None and "lost" in status.reason
    finally:
        stranger.kill()
        await stranger.wait()


async def test_walltime_is_enforced(adapter: LocalAdapter, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "import time; time.sleep(30)", walltime_seconds=0.4)
    sid = await adapter.submit(spec)
    status = await wait_finished(adapter, spec, sid)
    assert status.state is BackendState.FAILED
    assert status.reason == "worker 0: walltime of 0.4 s exceeded"
    assert status.return_code == 128 + signal.SIGTERM  # 143: it obeyed the SIGTERM
    assert status.started_at is not None and status.ended_at is not None
    # not before the walltime; stopped, not waited out (the command sleeps 30 s)
    assert 0.4 <= status.ended_at - status.started_at < 15


async def test_a_job_users_command_past_its_walltime_is_killed_after_the_grace(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # its spawner started it, the executor's timers stop it: SIGTERM (ignored), then SIGKILL
    script = "trap '' TERM; echo up; sleep 30"
    spec = by_job_user(
        make_spec(tmp_path, "", command=("/bin/sh", "-c", script), walltime_seconds=0.4)
    )
    status = await wait_finished(adapter, spec, await adapter.submit(spec))
    assert status.state is BackendState.FAILED
    assert status.reason == "worker 0: walltime of 0.4 s exceeded"
    assert status.return_code == 128 + signal.SIGKILL
    assert status.started_at is not None and status.ended_at is not None
    assert 0.4 + GRACE <= status.ended_at - status.started_at < 15


# ---- logs ---------------------------------------------------------------------------------


async def test_logs_read_in_pieces_with_offsets(adapter: LocalAdapter, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "print('line one'); print('zweite Zeile: äöü €')")
    sid = await adapter.submit(spec)
    await wait_finished(adapter, spec, sid)
    whole = ex.stdout_path(spec.output_dir, 0).read_text(encoding="utf-8")
    pieces, offset = [], 0
    while True:
        chunk = await adapter.logs(spec, sid, offset=offset, limit=5)
        pieces.append(chunk.text)
        offset = chunk.offset
        if chunk.complete:
            break
        assert len(pieces) < 100
    assert "".join(pieces) == whole
    assert offset == len(whole.encode())
    tail = await adapter.logs(spec, sid, offset=5)  # 'line one' from byte 5 → 'one\n…'
    assert tail.text == whole[5:]


async def test_logs_of_several_workers_with_headers(adapter: LocalAdapter, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "print('zero', end='')", "print('one')")
    sid = await adapter.submit(spec)
    await wait_finished(adapter, spec, sid)
    chunk = await adapter.logs(spec, sid)
    assert chunk.text == "==> worker 0 <==\nzero\n==> worker 1 <==\none\n"
    assert chunk.complete


async def test_logs_of_a_running_job_are_not_complete(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "import time; print('hi', flush=True); time.sleep(30)")
    sid = await adapter.submit(spec)
    await wait_text(ex.stdout_path(spec.output_dir, 0), "hi")
    chunk = await adapter.logs(spec, sid)
    assert (chunk.text, chunk.offset, chunk.complete) == ("hi\n", 3, False)
    with pytest.raises(AdapterError):
        await adapter.logs(spec, sid, offset=-1)


async def test_logs_of_several_workers_keep_offsets_while_running(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"  # worker 0 prints its second line only once the test opens the gate
    first = (
        "import os, time; print('zero', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        "print('end')"
    )
    spec = make_spec(tmp_path, first, "print('one')")
    sid = await adapter.submit(spec)
    await wait_text(ex.stdout_path(spec.output_dir, 0), "zero")
    await wait_text(ex.stdout_path(spec.output_dir, 1), "one")
    early = await adapter.logs(spec, sid)  # worker 1 waits until worker 0's section is closed
    assert (early.text, early.complete) == ("==> worker 0 <==\nzero\n", False)
    gate.touch()
    await wait_finished(adapter, spec, sid)
    rest = await adapter.logs(spec, sid, offset=early.offset)
    assert (rest.text, rest.complete) == ("end\n==> worker 1 <==\none\n", True)


def test_logs_any_chunking_reassembles_the_stream(tmp_path: Path) -> None:
    adapter = LocalAdapter(grace_seconds=GRACE)
    spec = make_spec(tmp_path, "print('αβγ 日本'); print('x' * 7, end='')", "print('последний')")

    async def run() -> str:
        sid = await adapter.submit(spec)
        await wait_finished(adapter, spec, sid)
        return (await adapter.logs(spec, sid)).text

    whole = asyncio.run(run())

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=20))
    def reassembles(limits: list[int]) -> None:
        async def read() -> str:
            text, offset, i = "", 0, 0
            while True:
                chunk = await adapter.logs(
                    spec, "local-job-1", offset=offset, limit=limits[i % len(limits)]
                )
                text, offset, i = text + chunk.text, chunk.offset, i + 1
                if chunk.complete:
                    return text

        assert asyncio.run(read()) == whole

    reassembles()


# ---- usage --------------------------------------------------------------------------------


async def test_usage_of_a_busy_loop(adapter: LocalAdapter, tmp_path: Path) -> None:
    # busy until 60 s of CPU (cancelled long before): however loaded the machine, it gets there
    spec = make_spec(tmp_path, "import time\nwhile time.process_time() < 60: pass")
    started = time.monotonic()
    sid = await adapter.submit(spec)
    live: dict[str, Any] = {}
    while time.monotonic() - started < 30:
        live = await adapter.usage(spec, sid)
        if live["cpuSeconds"] > 0.3:  # a busy core gets there in about 0.3 s of CPU
            break
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    assert 0.3 < live["cpuSeconds"] <= elapsed * (os.cpu_count() or 1) + 0.1
    assert live["instantTotalMemory"] > 1.0  # a Python interpreter holds several MB
    assert live["maxTotalMemory"] >= live["instantTotalMemory"]
    assert live["memoryCpuSeconds"] > 0  # memory (GB) x CPU seconds, integrated
    assert datetime.fromisoformat(live["timeInstant"]).utcoffset() is not None
    await adapter.cancel(spec, sid)
    final = await adapter.usage(spec, sid)  # finished: the last sample with the final CPU time
    assert final["cpuSeconds"] >= live["cpuSeconds"]
    assert final["maxTotalMemory"] >= live["instantTotalMemory"]
    assert await adapter.usage(spec, sid) == final
    assert await LocalAdapter().usage(spec, sid) == final  # after a restart, from usage.json


async def test_a_poll_carries_the_usage_sampled_from_the_same_read(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # before, the engine asked usage() after each poll: a second thread hop and a second read
    # of the workers' state files and process table for every poll of a job
    spec = make_spec(tmp_path, "import time\nwhile time.process_time() < 60: pass")
    started = time.monotonic()
    sid = await adapter.submit(spec)
    while True:  # a busy core gets there in about 0.3 s of CPU; 30 s however loaded
        status = await adapter.poll(spec, sid)
        busy = status.usage is not None and status.usage["cpuSeconds"] > 0.3
        if busy or time.monotonic() - started > 30:
            break
        await asyncio.sleep(0.1)
    assert status.state is BackendState.RUNNING and status.usage is not None
    live = status.usage
    assert live["instantTotalMemory"] > 1.0 and live["memoryCpuSeconds"] > 0
    later = await adapter.usage(spec, sid)  # the same record, integrated on from the poll's
    assert later["cpuSeconds"] >= live["cpuSeconds"]
    assert later["memoryCpuSeconds"] >= live["memoryCpuSeconds"]
    await adapter.cancel(spec, sid)
    ended = await adapter.poll(spec, sid)
    assert ended.state is BackendState.CANCELLED and ended.usage is not None
    assert ended.usage == await adapter.usage(spec, sid)  # the final sample
    assert ended.usage["cpuSeconds"] >= later["cpuSeconds"]


# ---- find and crash survival ----------------------------------------------------------------


async def test_find_tells_dispatched_from_never_reached(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, "pass")
    assert await adapter.find(spec) is None  # never submitted
    spec.output_dir.mkdir(parents=True)
    ex.write_json_atomic(spec.output_dir / ex.TAG_FILE, {"job_id": spec.job_id})
    assert await adapter.find(spec) is None  # tagged, but no worker started
    status = await adapter.poll(spec, adapter.scheduler_id(spec))
    assert status.state is BackendState.UNKNOWN
    sid = await adapter.submit(spec)  # dispatched again: now it runs
    assert await adapter.find(spec) == sid
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED


async def test_submit_twice_starts_once(adapter: LocalAdapter, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "import time; print('run', flush=True); time.sleep(0.3)")
    first = await adapter.submit(spec)
    pid = state(spec)["pid"]
    assert await adapter.submit(spec) == first
    assert state(spec)["pid"] == pid
    await wait_finished(adapter, spec, first)
    assert ex.stdout_path(spec.output_dir, 0).read_text() == "run\n"


SERVER = """
import asyncio, json, sys, time
from pathlib import Path
from apportion.adapters.base import JobSpec, WorkerSpec
from apportion.adapters.local.adapter import LocalAdapter
args = json.loads(sys.argv[1])
spec = JobSpec(job_id=args["job_id"], name="crash", command=tuple(args["command"]),
    cluster_id="local", scheduler={}, workers=(WorkerSpec(0, "n", ("0",)), WorkerSpec(1, "n", ())),
    output_dir=Path(args["output_dir"]))
print(asyncio.run(LocalAdapter().submit(spec)), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("exit_code", "expected"), [(0, BackendState.COMPLETED), (5, BackendState.FAILED)]
)
async def test_job_survives_a_sigkilled_server(
    adapter: LocalAdapter, tmp_path: Path, exit_code: int, expected: BackendState
) -> None:
    gate = tmp_path / "may-exit"  # the job runs until the test has seen it running
    code = gate_code(gate) + f"raise SystemExit({exit_code})"
    spec = make_spec(tmp_path, code, gpus=(("0",), ()))
    args = {
        "job_id": spec.job_id,
        "command": list(spec.command),
        "output_dir": str(spec.output_dir),
    }
    server = await asyncio.create_subprocess_exec(
        PY, "-c", SERVER, json.dumps(args), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 60)
        assert line.decode().strip() == "local-job-1"
    finally:
        server.kill()  # SIGKILL, as a crash
        await server.wait()
    restarted = adapter  # a brand-new instance that never saw the submit
    sid = await restarted.find(spec)
    assert sid == "local-job-1"
    assert (await restarted.poll(spec, sid)).state is BackendState.RUNNING
    gate.touch()
    status = await wait_finished(restarted, spec, sid)
    assert (status.state, status.return_code) == (expected, exit_code)


async def test_a_worker_never_started_fails_the_job(adapter: LocalAdapter, tmp_path: Path) -> None:
    # The server died after starting worker 0 of 2: after the restart, the job is failed and
    # worker 0 is stopped (gang), instead of running forever without its partner.
    pair = make_spec(
        tmp_path, "import time; print('up', flush=True); time.sleep(30)", gpus=((), ())
    )
    alone = make_spec(tmp_path, "import time; print('up', flush=True); time.sleep(30)")
    sid = await adapter.submit(alone)
    await wait_text(ex.stdout_path(alone.output_dir, 0), "up")
    restarted = LocalAdapter(grace_seconds=GRACE)
    try:
        assert await restarted.find(pair) == sid
        status = await wait_finished(restarted, pair, sid)
    finally:
        await restarted.close()
    assert status.state is BackendState.FAILED
    assert status.reason == "worker 1 was never started (the server stopped during submit)"
    assert state(pair, 0)["stopped_by"] == "gang"
    assert state(pair, 0)["reason"] == f"stopped: {status.reason}"


# ---- the executor -------------------------------------------------------------------------


def executor_arguments(jobs_dir: Path) -> list[str]:
    """The last arguments of the executor of ``jobs_dir``: its script and the directory."""
    return [str(Path(ex.__file__).resolve()), str(jobs_dir.resolve())]


async def test_one_executor_runs_every_job_of_a_directory_and_exits_once_idle(
    tmp_path: Path,
) -> None:
    adapter = LocalAdapter(grace_seconds=GRACE)
    gate = tmp_path / "may-exit"
    specs = [make_spec(tmp_path, gate_code(gate), job_id=f"job-{i}") for i in range(3)]
    try:
        sids = [await adapter.submit(spec) for spec in specs]
        executors = {state(spec)["executor_pid"] for spec in specs}
        assert len(executors) == 1  # one process starts them all, no interpreter per job
        (executor,) = executors
        assert psutil.Process(executor).cmdline()[-2:] == executor_arguments(tmp_path)
        socket_file = tmp_path / ex.SOCKET_NAME
        mode = await asyncio.to_thread(lambda: socket_file.stat().st_mode)
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600  # the server's user alone may connect
        gate.touch()
        for spec, sid in zip(specs, sids, strict=True):
            assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    finally:
        gate.touch()
        await adapter.close()
    assert gone(executor)  # no command to watch, no server connected: it exited
    assert not await asyncio.to_thread(socket_file.exists)


async def test_an_executor_outlives_its_server_until_its_commands_end(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    gate = tmp_path / "may-exit"
    spec = make_spec(tmp_path, gate_code(gate))
    first = LocalAdapter(grace_seconds=GRACE)
    sid = await first.submit(spec)
    await first.close()  # as a server that stops while the job runs
    executor = state(spec)["executor_pid"]
    assert not gone(executor)
    assert await adapter.find(spec) == sid  # the next server finds the job, and its executor
    gate.touch()
    assert (await wait_finished(adapter, spec, sid)).state is BackendState.COMPLETED
    assert state(spec)["executor_pid"] == executor


async def test_a_second_executor_for_a_directory_is_refused(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    gate = tmp_path / "may-exit"
    spec = make_spec(tmp_path, gate_code(gate))
    await adapter.submit(spec)
    second = await asyncio.create_subprocess_exec(
        PY, "-I", "-S", ex.__file__, str(tmp_path), stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(second.wait(), 30) == ex.ANOTHER_EXECUTOR
    gate.touch()


async def test_the_adapter_is_told_when_a_worker_ended(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    told: list[str | None] = []
    adapter.on_change(told.append)
    gate = tmp_path / "may-exit"
    spec = make_spec(tmp_path, gate_code(gate), job_id="job-7")
    await adapter.submit(spec)
    assert told == []  # nothing ended yet
    gate.touch()
    for _ in range(1500):  # 30 s at most; no poll is made meanwhile
        if told:
            break
        await asyncio.sleep(0.02)
    assert told == ["job-7"]
    assert state(spec)["ended_at"] is not None  # told after the end was recorded


async def executor_says(jobs_dir: Path, *lines: bytes) -> list[dict[str, Any]]:
    """What the executor of ``jobs_dir`` answers to ``lines``, sent on a connection of their own."""
    fd = os.open(jobs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reader, writer = await asyncio.open_unix_connection(ex.socket_address(fd))
    finally:
        os.close(fd)
    try:
        writer.write(b"".join(lines))
        return [json.loads(await reader.readline()) for _ in lines]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_start_of_another_attempt_starts_nothing(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # a start sent before a crash and carried out after the next submit's tag: never a 2nd run
    gate = tmp_path / "may-exit"
    running = make_spec(tmp_path, gate_code(gate), job_id="job-0")
    await adapter.submit(running)  # the executor is up
    stale = make_spec(tmp_path, "print('ran')", job_id="job-1")
    stale.output_dir.mkdir()
    ex.write_json_atomic(stale.output_dir / ex.TAG_FILE, {"attempt": "the-next-one"})
    request = start_request(stale, tmp_path, "an-earlier-one", GRACE)
    (answer,) = await executor_says(tmp_path, json.dumps(request).encode() + b"\n")
    assert answer == {"error": "this start was superseded by a later submit; nothing started"}
    assert not ex.state_path(stale.output_dir, 0).exists()
    gate.touch()


async def test_find_waits_for_a_start_sent_before_it(adapter: LocalAdapter, tmp_path: Path) -> None:
    # a dead server's last start, still unread by the executor when the next server looks
    gate = tmp_path / "may-exit"
    spec = make_spec(tmp_path, gate_code(gate))
    sid = await adapter.submit(spec)  # the executor is up; then the same job again, tagged anew
    gate.touch()
    await wait_finished(adapter, spec, sid)
    again = make_spec(tmp_path, "print('once')", job_id="job-9")
    again.output_dir.mkdir()
    ex.write_json_atomic(again.output_dir / ex.TAG_FILE, {"job_id": "job-9", "attempt": "last"})
    request = json.dumps(start_request(again, tmp_path, "last", GRACE)).encode() + b"\n"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _, writer = await asyncio.open_unix_connection(ex.socket_address(fd))
    finally:
        os.close(fd)
    writer.write(request)
    await writer.drain()
    writer.close()  # as a server that dies right after sending
    restarted = LocalAdapter(grace_seconds=GRACE)
    try:
        assert await restarted.find(again) == "local-job-9"
    finally:
        await restarted.close()
    status = await wait_finished(adapter, again, "local-job-9")
    assert status.state is BackendState.COMPLETED


async def test_a_bad_request_is_answered_and_hurts_no_other_client(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    gate = tmp_path / "may-exit"
    spec = make_spec(tmp_path, gate_code(gate))
    sid = await adapter.submit(spec)
    answers = await executor_says(
        tmp_path, b"not json\n", b'{"op": "launch"}\n', b'{"op": "start"}\n', b"[]\n"
    )
    assert [a["error"].split(":")[0] for a in answers] == [
        "bad request",
        "unknown op 'launch'",
        "bad request",
        "bad request",
    ]
    assert (await adapter.poll(spec, sid)).state is BackendState.RUNNING  # the job goes on
    after = make_spec(tmp_path, "print('next')", job_id="job-2")
    finished = await wait_finished(adapter, after, await adapter.submit(after))
    assert finished.state is BackendState.COMPLETED  # and the adapter's connection too
    gate.touch()


async def test_an_executor_out_of_descriptors_fails_that_start_and_goes_on(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    """A worker the executor cannot fork or watch (no descriptor left) ends its job "could
    not start"; the executor itself goes on, and its started siblings are stopped."""
    gate = tmp_path / "may-exit"
    first = make_spec(tmp_path, gate_code(gate), job_id="job-0")
    await adapter.submit(first)  # the executor is up, its connections made
    [status] = await executor_says(tmp_path, b'{"op": "status"}\n')
    pid = int(status["pid"])
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    open_now = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now + 8, hard))
    try:
        sleepers = tuple(() for _ in range(12))  # twelve workers, descriptors for a few
        many = make_spec(tmp_path, "import time; time.sleep(60)", job_id="job-1", gpus=sleepers)
        ended = await wait_finished(adapter, many, await adapter.submit(many))
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert ended.state is BackendState.FAILED
    assert "could not start" in (ended.reason or ""), ended.reason
    assert "Too many open files" in (ended.reason or "") or "could not watch" in (
        ended.reason or ""
    )
    assert all(w.kind == "ended" for w in read_workers(many))  # none left running
    after = make_spec(tmp_path, "print('next')", job_id="job-2")
    assert (await wait_finished(adapter, after, await adapter.submit(after))).state is (
        BackendState.COMPLETED
    )
    gate.touch()


async def test_a_client_that_finds_no_descriptor_left_waits_and_is_answered(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    """A connection the executor cannot accept (no descriptor left: EMFILE) waits in the
    backlog while accepting pauses; before, the executor ended on it, with every job it
    watched."""
    gate = tmp_path / "may-exit"
    first = make_spec(tmp_path, gate_code(gate), job_id="job-0")
    sid = await adapter.submit(first)
    [status] = await executor_says(tmp_path, b'{"op": "status"}\n')
    pid = int(status["pid"])
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    open_now = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now - 1, hard))  # none left
    try:
        asking = asyncio.ensure_future(executor_says(tmp_path, b'{"op": "status"}\n'))
        await wait_text(tmp_path / ex.LOG_NAME, "cannot accept a connection")
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    async with asyncio.timeout(30):  # a deadline for a broken test, not a timing assertion
        [again] = await asking
    assert again["pid"] == pid  # the same executor answers
    assert (await adapter.poll(first, sid)).state is BackendState.RUNNING
    gate.touch()
    assert (await wait_finished(adapter, first, sid)).state is BackendState.COMPLETED


async def test_an_executor_runs_more_workers_than_its_soft_limit_of_open_files(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    """A pidfd per running worker: with the soft limit it was started with (1,024 is the usual
    default) an executor refused the 1,000th running task of an array. It raises its own to
    the hard limit; its commands keep the limit it was started with."""
    soft = 64
    limited = f'ulimit -Sn {soft} && exec "$0" "$@"'  # started under a low soft limit
    argv = ("/bin/sh", "-c", limited, PY, "-I", "-S", ex.__file__, str(tmp_path))
    async with own_executor(tmp_path, *argv) as started:
        workers = tuple(() for _ in range(soft + 16))
        spec = make_spec(
            tmp_path, "", command=("/bin/sh", "-c", "ulimit -n; exec sleep 60"), gpus=workers
        )
        sid = await adapter.submit(spec)  # the adapter's link connects to that executor
        assert [w.kind for w in read_workers(spec)] == ["running"] * len(workers)
        await wait_text(ex.stdout_path(spec.output_dir, 0), "\n")
        assert ex.stdout_path(spec.output_dir, 0).read_text().strip() == str(soft)
        await adapter.cancel(spec, sid)
        assert (await adapter.poll(spec, sid)).state is BackendState.CANCELLED
        await adapter.close()  # the executor exits: no command, no client
        async with asyncio.timeout(30):
            assert await started.wait() == 0


def sleeping(tmp_path: Path, as_job_user: bool, **fields: Any) -> JobSpec:
    """A job whose workers sleep 300 s: as the executor's user, or as the job user (started
    by its spawner)."""
    if not as_job_user:
        return make_spec(tmp_path, "import time; time.sleep(300)", **fields)
    return by_job_user(
        make_spec(tmp_path, "", command=("/bin/sh", "-c", "exec sleep 300"), **fields)
    )


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat_file:
        return int(stat_file.read().rsplit(")", 1)[1].split()[1])


async def test_a_spawner_with_nothing_running_ends_and_the_next_start_makes_another(
    adapter: LocalAdapter, tmp_path: Path
) -> None:
    # an executor of this test's own, its SPAWNER_IDLE made short (run from its file with
    # that one value changed), the adapter connected to it
    code = (
        "import runpy, sys\n"
        "main = runpy.run_path(sys.argv[1])['main']\n"
        "main.__globals__['SPAWNER_IDLE'] = 0.5  # run_path gives a copy of its globals\n"
        "sys.exit(main(sys.argv[2:]))\n"
    )
    async with own_executor(tmp_path, PY, "-I", "-S", "-c", code, ex.__file__, str(tmp_path)) as (
        started
    ):
        parents = []
        for job_id in ("job-1", "job-2"):
            echo = ("/bin/sh", "-c", "echo $PPID")
            spec = by_job_user(make_spec(tmp_path, "", job_id=job_id, command=echo))
            finished = await wait_finished(adapter, spec, await adapter.submit(spec))
            assert finished.state is BackendState.COMPLETED
            assert state(spec)["executor_pid"] == started.pid
            parents.append(int(ex.stdout_path(spec.output_dir, 0).read_text()))
            assert await wait_gone(parents[-1])  # ended 0.5 s after the job
        assert parents[0] != parents[1]  # the second job's spawner is a new one
        assert started.returncode is None  # the executor lives on: its client is connected
        await adapter.close()  # the executor exits: no command, no client
        async with asyncio.timeout(30):
            assert await started.wait() == 0


@BOTH_USERS
async def test_a_sigtermed_executor_stops_its_commands_and_exits(
    adapter: LocalAdapter, tmp_path: Path, as_job_user: bool
) -> None:
    spec = sleeping(tmp_path, as_job_user)
    sid = await adapter.submit(spec)
    executor = state(spec)["executor_pid"]
    starter = parent_of(int(state(spec)["pid"]))  # the executor, or the job user's spawner
    assert (starter == executor) is not as_job_user
    os.kill(executor, signal.SIGTERM)  # the adapter started it, for this test's jobs
    status = await wait_finished(adapter, spec, sid)
    assert status.state is BackendState.FAILED
    assert status.reason == "worker 0: its executor was asked to stop"
    assert state(spec)["stopped_by"] == "signal"
    assert status.exit_codes == (128 + signal.SIGTERM,)
    assert await wait_gone(executor)  # though the adapter is still connected
    assert await wait_gone(starter)  # its spawner with it


@BOTH_USERS
async def test_a_sigkilled_executor_loses_its_jobs_and_a_new_one_starts_the_next(
    adapter: LocalAdapter, tmp_path: Path, as_job_user: bool
) -> None:
    spec = sleeping(tmp_path, as_job_user, gpus=((), ()))
    sid = await adapter.submit(spec)
    executor, commands = state(spec)["executor_pid"], [state(spec, i)["pid"] for i in (0, 1)]
    starter = parent_of(commands[0])
    os.kill(executor, signal.SIGKILL)  # the adapter started it, for this test's jobs
    status = await wait_finished(adapter, spec, sid)
    assert status.state is BackendState.FAILED
    assert status.reason == "worker 0 was lost: its executor died before recording its end"
    assert status.exit_codes == (None, None)
    for pid in commands:  # SIGKILLed by that poll: nobody could record their end
        assert await wait_gone(pid)
    assert await wait_gone(starter)  # a spawner ends with its executor's socket
    after = make_spec(tmp_path, "print('next')", job_id="job-2")
    finished = await wait_finished(adapter, after, await adapter.submit(after))
    assert finished.state is BackendState.COMPLETED
    assert state(after)["executor_pid"] != executor


# ---- validation and listings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"command": ()}, "non-empty list"),
        ({"workers": ()}, "no workers"),
        ({"working_dir": "/nonexistent/dir-xyz"}, "does not exist"),
        ({"env": {"A=B": "x"}}, "environment variable"),
    ],
)
async def test_bad_specs_are_refused(
    adapter: LocalAdapter, tmp_path: Path, fields: dict[str, Any], words: str
) -> None:
    spec = make_spec(tmp_path, "pass", **fields)
    with pytest.raises(AdapterError, match=words):
        await adapter.submit(spec)
    assert not (spec.output_dir / ex.TAG_FILE).exists()


async def test_partitions_and_discover() -> None:
    adapter = LocalAdapter()
    assert await adapter.partitions() == [
        {"name": "local", "adapter": "local", "nodes": 1, "cpus": os.cpu_count(), "state": "up"}
    ]
    assert await adapter.discover({"type": "local"}) == []
