"""Jobs never run as the server, and the data dir is the server's alone (issue 9, items 2–3).

Each attack here is one a ``submit`` key could make on the code before this change (then every
job ran as the server — root in CI — in any directory, with any environment): each test failed
there and passes now. Real OS users: as root, jobs run as ``apportion-jobs``
(``scripts/tenant_user.sh``, run by ``make test``). Not root, or without that user, the tests
that need the switch skip and say why — except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from apportion.adapters.base import BackendState, JobSpec, WorkerSpec
from apportion.adapters.local.adapter import LocalAdapter
from apportion.errors import Conflict, InvalidRequest
from apportion.jobs.boundary import JobBoundary
from apportion.jobs.identity import JobIdentity
from apportion.jobs.models import STORED, JobConfig, QueueConfig
from apportion.server.credentials import Profile, write_profile
from tests.conftest import ADMIN_KEY, Running, running_server
from tests.jobs_helpers import (
    JOB_USER,
    PY,
    create_queue,
    job_user,
    needs_job_user,
    submit,
    wait_for,
)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A 0755 directory in /tmp: what it holds is guarded by its own modes only (``tmp_path``
    is inside root's 0700 ``/tmp/pytest-of-root``, which would hide a file mode's mistake)."""
    path = Path(tempfile.mkdtemp(prefix="apportion-isolation-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(open_dir: Path) -> AsyncIterator[Running]:
    """A server whose data dir, credentials file (holding the admin key, as the first start
    writes it) and jobs root are in ``open_dir``."""
    credentials = open_dir / "home" / ".config" / "apportion" / "credentials"
    write_profile(
        "default", Profile(url="http://127.0.0.1:1", ws_url=None, api_key=ADMIN_KEY), credentials
    )
    async with running_server(
        open_dir / "data", credentials_file=credentials, jobs_root=open_dir / "jobs"
    ) as live:
        await live.load_demo_fleet()
        yield live


async def _run(live: Running, code: str, **config: Any) -> str:
    """Run ``code`` as a job to its end; its stdout."""
    job_id = await submit(live, {"command": [PY, "-c", code], **config})
    record = await wait_for(live, job_id, "completed", "failed")
    async with live.http.get(f"{live.url}/jobs/{job_id}/logs") as response:
        text = await response.text()
    assert record["status"] == "completed", (record, text)
    return text


async def _refused(live: Running, config: dict[str, Any]) -> dict[str, Any]:
    body = {"config": {"command": [PY, "-c", "pass"], **config}}
    async with live.http.post(f"{live.url}/jobs/submit", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 400, answer
    return {"path": answer["error"]["details"].get("path"), "message": answer["message"]}


# ---------------------------------------------------------------- as whom


WHO = (
    "import json, os, pwd\n"
    "print(json.dumps({'user': pwd.getpwuid(os.geteuid()).pw_name, 'uid': os.getuid(),"
    " 'gid': os.getgid(), 'groups': os.getgroups(), 'home': os.environ.get('HOME'),"
    " 'USER': os.environ.get('USER'), 'LOGNAME': os.environ.get('LOGNAME'), 'cwd': os.getcwd()}))"
)


async def test_a_local_job_runs_as_the_job_user_in_its_own_directory(
    server: Running, open_dir: Path
) -> None:
    needs_job_user()
    seen = json.loads(await _run(server, WHO))
    entry = pwd.getpwnam(JOB_USER)
    assert seen["user"] == JOB_USER and seen["uid"] == entry.pw_uid != 0
    assert seen["gid"] == entry.pw_gid and 0 not in seen["groups"]
    assert seen["home"] == entry.pw_dir and seen["USER"] == seen["LOGNAME"] == JOB_USER
    cwd = Path(seen["cwd"])  # its default working directory: <jobs root>/<job id>, its own
    info = os.stat(cwd)
    assert cwd.parent == open_dir / "jobs" and info.st_uid == entry.pw_uid
    assert stat.S_IMODE(info.st_mode) == 0o700


async def test_the_server_says_as_whom_jobs_run(server: Running) -> None:
    needs_job_user()
    assert server.server.jobs_identity == (
        f"jobs run as their account's OS user, else as {JOB_USER!r}; never as the server (root)"
    )


# ---------------------------------------------------------------- what a job cannot read

STEAL = """
import json, os, sys
tried = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        tried[name] = "read"
    except OSError as exc:
        tried[name] = type(exc).__name__
print(json.dumps(tried))
"""


async def test_a_job_cannot_read_the_data_dir_the_database_the_credentials_or_the_servers_environ(
    server: Running, open_dir: Path
) -> None:
    needs_job_user()
    credentials = open_dir / "home" / ".config" / "apportion" / "credentials"
    assert credentials.exists()  # the admin key is in it
    targets = {
        "data dir": str(open_dir / "data"),
        "database": str(open_dir / "data" / "apportion.db"),
        "credentials": str(credentials),
        "environ": f"/proc/{os.getpid()}/environ",  # the server is this process
    }
    job_id = await submit(server, {"command": [PY, "-c", STEAL, json.dumps(targets)]})
    await wait_for(server, job_id, "completed")
    async with server.http.get(f"{server.url}/jobs/{job_id}/logs") as response:
        tried = json.loads(await response.text())
    assert tried == dict.fromkeys(targets, "PermissionError"), tried


# ---------------------------------------------------------------- file modes


async def test_the_data_dir_the_database_and_a_jobs_files_are_the_servers_alone(
    server: Running, open_dir: Path
) -> None:
    await _run(server, "print('hello')")
    data = open_dir / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    db_files = [p for p in data.iterdir() if p.name.startswith("apportion.db")]
    assert {p.name for p in db_files} >= {"apportion.db", "apportion.db-wal", "apportion.db-shm"}
    for path in db_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    (job_dir,) = [p for p in (data / "jobs").iterdir() if p.is_dir()]
    executor_files = [p for p in (data / "jobs").iterdir() if not p.is_dir()]
    assert {p.name for p in executor_files} <= {"executor.sock", "executor.lock", "executor.log"}
    for path in executor_files:  # the socket too: nobody else may connect to it
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((data / "jobs").stat().st_mode) == 0o700
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    files = list(job_dir.iterdir())
    assert {"worker-0.out", "worker-0.state.json"} <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_an_existing_data_dir_and_database_are_made_private(open_dir: Path) -> None:
    data = open_dir / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "apportion.db").touch(mode=0o644)
    async with running_server(data):
        pass
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "apportion.db").stat().st_mode) == 0o600


# ---------------------------------------------------------------- refused at submit


async def test_working_dirs_outside_the_allowed_roots_are_refused_at_submit(
    server: Running, open_dir: Path
) -> None:
    jobs_root = open_dir / "jobs"
    jobs_root.mkdir(exist_ok=True)
    (jobs_root / "to-etc").symlink_to("/etc")
    (jobs_root / "to-data").symlink_to(open_dir / "data")
    refused = [
        "/",
        "/proc",
        "/proc/self",
        "/proc/1/root",  # root could not resolve it: a 500 before (issue 21, item 8)
        "/proc/1/cwd",
        "/proc/self/cwd",  # resolved to the server's directory, and the answer said which
        "/dev/shm",
        str(open_dir / "data"),
        str(open_dir / "data" / "jobs"),
        str(open_dir / "home" / ".config" / "apportion"),
        "/tmp",
        f"{jobs_root}/../data",  # .. escapes
        f"{jobs_root}/../home",
        str(jobs_root / "to-etc"),  # a symlink out
        str(jobs_root / "to-data"),
    ]
    for working_dir in refused:
        error = await _refused(server, {"working_dir": working_dir})
        assert error["path"] == "body.config.working_dir", (working_dir, error)
        assert error["message"].startswith(
            f"config.working_dir {working_dir} is not a directory under an allowed root"
        ), error
        # one answer for every refusal, naming the roots and never what the path resolved to
        assert str(jobs_root) in error["message"], error
        for resolved in ("/etc", str(open_dir / "data"), os.getcwd()):
            assert f"{resolved} " not in error["message"].replace(f"{working_dir} ", ""), error


async def test_a_working_dir_under_an_allowed_root_is_accepted(
    server: Running, open_dir: Path, job_tmp: Path
) -> None:
    await create_queue(server, name="shared", working_dir=str(job_tmp))
    (job_tmp / "sub").mkdir()
    if os.geteuid() == 0:
        shutil.chown(job_tmp / "sub", JOB_USER, JOB_USER)
    out = await _run(
        server, "import os; print(os.getcwd())", queue="shared", working_dir=str(job_tmp / "sub")
    )
    assert out.strip() == str(job_tmp / "sub")
    # a job that names no working_dir runs in its queue's (issue 10: it was ignored)
    assert (await _run(server, "import os; print(os.getcwd())", queue="shared")).strip() == str(
        job_tmp
    )


async def test_injection_variables_are_refused_unless_the_queue_allows_them(
    server: Running,
) -> None:
    for name in ("LD_PRELOAD", "PYTHONPATH", "LD_LIBRARY_PATH", "BASH_ENV", "NODE_OPTIONS"):
        error = await _refused(server, {"env": {name: "/tmp/evil"}})
        assert error["path"] == f"body.config.env.{name}", error
        assert "allowed_env" in error["message"], error
    await create_queue(server, name="pythonic", allowed_env=["PYTHONPATH"])
    out = await _run(
        server,
        "import os; print(os.environ['PYTHONPATH'])",
        queue="pythonic",
        env={"PYTHONPATH": "/opt/lib"},
    )
    assert out.strip() == "/opt/lib"
    error = await _refused(server, {"queue": "pythonic", "env": {"LD_PRELOAD": "/tmp/x.so"}})
    assert error["path"] == "body.config.env.LD_PRELOAD"


async def test_environment_names_are_posix_names_checked_at_submit(server: Running) -> None:
    for name in ("A=B", "", "1ABC", "A B", "A\0B", "Ä"):
        error = await _refused(server, {"env": {name: "x"}})
        assert error["path"] == "body.config.env", error
        assert "POSIX name" in error["message"], error
    error = await _refused(server, {"env": {"A": "x\0y"}})
    assert error["path"] == "body.config.env" and "NUL" in error["message"]


async def test_a_queue_with_a_bad_env_name_is_refused(server: Running) -> None:
    async with server.http.post(
        f"{server.url}/queues", json={"name": "bad", "env": {"A=B": "x"}}
    ) as response:
        assert response.status == 400
        assert "POSIX name" in await response.text()


# ---------------------------------------------------------------- a server that is not root


def _boundary(identity: JobIdentity, root: Path) -> JobBoundary:
    return JobBoundary(identity, root / "jobs", (root / "data",))


def test_a_server_that_is_not_root_refuses_jobs_unless_the_operator_opted_in(
    tmp_path: Path,
) -> None:
    config = JobConfig.model_validate({"command": ["true"]})
    queue = QueueConfig(name="default")
    refusing = JobIdentity(JOB_USER, server_is_root=False, allow_as_server=False)
    with pytest.raises(Conflict, match="allow_jobs_as_server_user"):
        _boundary(refusing, tmp_path).check(config, queue, "default")
    assert refusing.describe().startswith("local jobs are refused: this server is not root")
    opted_in = JobIdentity(JOB_USER, server_is_root=False, allow_as_server=True)
    _boundary(opted_in, tmp_path).check(config, queue, "default")
    assert "allow_jobs_as_server_user is set" in opted_in.describe()


def test_a_root_server_without_its_job_user_refuses_jobs_naming_the_set_up_script(
    tmp_path: Path,
) -> None:
    config = JobConfig.model_validate({"command": ["true"]})
    missing = JobIdentity("no-such-user-xyz", server_is_root=True, allow_as_server=True)
    with pytest.raises(Conflict, match=r"scripts/tenant_user\.sh"):
        _boundary(missing, tmp_path).check(config, QueueConfig(name="default"), "default")
    as_root = JobIdentity("root", server_is_root=True, allow_as_server=True)
    with pytest.raises(Conflict, match="is root"):
        _boundary(as_root, tmp_path).check(config, QueueConfig(name="default"), "default")


def test_a_queue_root_that_holds_a_private_directory_is_no_root(tmp_path: Path) -> None:
    identity = JobIdentity(JOB_USER, server_is_root=False, allow_as_server=True)
    config = JobConfig.model_validate({"command": ["true"], "working_dir": str(tmp_path / "x")})
    with pytest.raises(InvalidRequest, match="not a directory under an allowed root"):
        _boundary(identity, tmp_path).check(
            config, QueueConfig(name="q", working_dir=str(tmp_path)), "default"
        )
    with pytest.raises(InvalidRequest, match="runs its jobs in its working_dir /, which is no"):
        _boundary(identity, tmp_path).check(
            JobConfig.model_validate({"command": ["true"], "working_dir": "/"}),
            QueueConfig(name="q", working_dir="/"),
            "default",
        )


# ---------------------------------------------------------------- the working directory, at start


async def test_a_working_dir_swapped_for_a_symlink_after_submit_is_not_entered(
    tmp_path: Path, job_tmp: Path
) -> None:
    """The job user swaps a directory it owns, already accepted at submit, for a symlink to a
    directory behind a 0700 root directory before dispatch. The command enters its working directory as the job
    user, so it cannot get in — before, root entered it and then dropped privileges, and the
    command read what was there by relative name."""
    needs_job_user()
    closed = tmp_path / "closed"  # like root's home: 0700, with a directory open to others
    closed.mkdir(mode=0o700)
    private = closed / "open"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    (private / "note").write_text("secret")
    (private / "note").chmod(0o644)
    (job_tmp / "d").symlink_to(private)
    spec = JobSpec(
        job_id="swapped",
        name="swapped",
        command=(PY, "-c", "print(open('note').read())"),
        cluster_id="local",
        scheduler={"type": "local"},
        workers=(WorkerSpec(0, "localhost", ()),),
        output_dir=tmp_path / "out",
        working_dir=str(job_tmp / "d"),
        run_as=job_user(),
    )
    adapter = LocalAdapter(grace_seconds=0.5)
    try:
        sid = await adapter.submit(spec)
        status = await adapter.poll(spec, sid)
        for _ in range(600):  # a deadline for a broken test, not a timing claim
            if status.state.finished:
                break
            await asyncio.sleep(0.05)
            status = await adapter.poll(spec, sid)
        assert status.state is BackendState.FAILED and status.return_code == 126, status
        assert "cannot enter its working directory" in (status.reason or ""), status
        assert (await adapter.logs(spec, sid)).text == ""
    finally:
        await adapter.close()  # its executor exits: it has nothing to run


def test_records_accepted_before_the_rules_still_load() -> None:
    """A job stored before env names and working dirs were checked is read back as it was
    (a server with such a record still starts); a submit with the same body is refused."""
    body = {"command": ["true"], "env": {"A=B": "x"}, "working_dir": "relative"}
    assert JobConfig.model_validate(body, context=STORED).env == {"A=B": "x"}
    with pytest.raises(ValidationError):
        JobConfig.model_validate(body)
    queue = {"name": "q", "env": {"A=B": "x"}, "allowed_env": ["not a name"]}
    assert QueueConfig.model_validate(queue, context=STORED).allowed_env == ["not a name"]
    with pytest.raises(ValidationError):
        QueueConfig.model_validate(queue)


def test_the_local_executors_directory_in_the_jobs_root_is_refused_and_the_root_stays(
    tmp_path: Path,
) -> None:
    # with PostgreSQL the local executor's files are <jobs root>/.local (docs/operations.md)
    identity = JobIdentity(JOB_USER, server_is_root=False, allow_as_server=True)
    root = tmp_path / "jobs"
    boundary = JobBoundary(identity, root, (tmp_path / "data",), private_in_root=(root / ".local",))
    queue = QueueConfig(name="default")
    inside = JobConfig.model_validate({"command": ["true"], "working_dir": str(root / ".local")})
    with pytest.raises(InvalidRequest, match="not a directory under an allowed root"):
        boundary.check(inside, queue, "default")
    beside = JobConfig.model_validate({"command": ["true"], "working_dir": str(root / "mine")})
    boundary.check(beside, queue, "default")  # the jobs root holding it is still a root
