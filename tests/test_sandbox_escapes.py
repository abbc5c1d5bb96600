"""Escapes a hostile policy tries from inside the sandbox; every one must fail.

Each test uploads ``tests/policies/escape`` (or a policy whose top-level code attacks) to a real
server and asks its ``management`` action to try one thing; the server tests run in this process,
so ``os.getpid()`` is the server's PID and ``tmp_path`` holds its data directory. Each of these
succeeded before the jail (checked against the code of commit b2c9d2d; docs/security.md).
"""

from __future__ import annotations

import asyncio
import io
import os
import pwd
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from apportion.policies.sandbox.jail import SANDBOX_USER, Jail
from apportion.policies.sandbox.pool import SandboxCall, SandboxLimits, SandboxPool
from tests.conftest import Running, running_server
from tests.sandbox_env import IN_CI, jailed  # noqa: F401 - a fixture
from tests.test_policy_upload import upload

pytestmark = pytest.mark.usefixtures("jailed")

POLICIES = Path(__file__).parent / "policies"
ESCAPE = "escape:1.0-hostile"
SECRET = "secret-that-only-the-server-may-read-0123"


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder / "code", arcname="code")
    return buffer.getvalue()


async def put_policy(running: Running, name: str, code: bytes, filename: str) -> None:
    record = {"name": name, "version": "1.0", "release_tag": "hostile"}
    response = await upload(running, record, code, filename)
    assert response.status == 201, await response.text()


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[Running]:
    """A server (data in ``tmp_path/data``, a secret file in it) with the escape policy."""
    data = tmp_path / "data"
    data.mkdir()
    secret = data / "credentials.json"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    os.environ["APPORTION_TEST_SECRET"] = SECRET  # the server's environment holds a secret too
    try:
        async with running_server(data, sandbox_memory_mb=256) as live:
            await put_policy(live, "escape", tar_gz(POLICIES / "escape"), "escape.tar.gz")
            yield live
    finally:
        del os.environ["APPORTION_TEST_SECRET"]


async def attempt(running: Running, action: str, **data: Any) -> tuple[int, Any]:
    """Ask the escape policy to try ``action``; answer the HTTP status and the data."""
    url = f"{running.url}/policies/{ESCAPE}/management"
    async with running.http.post(url, json={"action": action, "data": data}) as response:
        body = await response.json()
        return response.status, body.get("data", body)


async def test_the_servers_files_and_environment_cannot_be_read(
    hostile: Running, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for path in (data / "credentials.json", data / "apportion.db", f"/proc/{os.getpid()}/environ"):
        status, answer = await attempt(hostile, "read", path=str(path))
        assert status == 200, answer
        assert answer["read"] is False, (path, answer)
        assert SECRET not in str(answer)


async def test_no_tcp_connection_to_the_servers_own_port(hostile: Running) -> None:
    port = urlsplit(hostile.url).port
    assert port is not None
    status, answer = await attempt(hostile, "connect", host="127.0.0.1", port=port)
    assert status == 200, answer
    assert answer["connected"] is False, answer


async def test_nothing_outside_its_tmp_can_be_written(hostile: Running, tmp_path: Path) -> None:
    targets = [tmp_path / "data" / "escaped", tmp_path / "escaped"]
    for target in targets:
        status, answer = await attempt(hostile, "write", path=str(target))
        assert status == 200, answer
        assert answer["wrote"] is False, (target, answer)
    # /tmp in the jail is its own tmpfs: what it writes there never reaches the server's /tmp
    status, answer = await attempt(hostile, "write", path="/tmp/apportion-escaped")
    assert status == 200, answer
    assert not any(target.exists() for target in [*targets, Path("/tmp/apportion-escaped")])


async def test_another_policys_stored_code_cannot_be_rewritten(
    hostile: Running, tmp_path: Path
) -> None:
    victim_code = (POLICIES / "seed_style" / "code" / "function.py").read_bytes()
    await put_policy(hostile, "victim", victim_code, "function.py")
    stored = [
        path
        for path in (tmp_path / "data" / "policies").glob("*/code/function.py")
        if path.read_bytes() == victim_code
    ]
    assert len(stored) == 1
    status, answer = await attempt(hostile, "write", path=str(stored[0]))
    assert status == 200, answer
    assert answer["wrote"] is False, answer
    assert stored[0].read_bytes() == victim_code


def sleepers(seconds: str) -> list[psutil.Process]:
    """Live ``sleep <seconds>`` processes (``seconds`` marks the test that started them)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", seconds] and proc.info["status"] != "zombie":
            found.append(proc)
    return found


async def test_no_child_process_outlives_the_call(hostile: Running) -> None:
    status, answer = await attempt(hostile, "spawn", seconds="63.25")
    assert status == 200, answer
    # the worker is replaced after the call, its PID namespace with it (SIGKILL is prompt; the
    # namespace's teardown follows it): wait for that, at most 30 s
    _, alive = await asyncio.to_thread(psutil.wait_procs, sleepers("63.25"), 30)
    assert alive == []


async def test_the_private_tmp_is_capped(hostile: Running) -> None:
    status, answer = await attempt(hostile, "fill", mb=200)
    assert status == 200, answer
    assert answer["written_mb"] <= 64, answer  # SandboxLimits.tmp_mb
    assert "No space left" in str(answer["error"]), answer


async def test_memory_is_capped_for_the_whole_process_tree(
    hostile: Running,
    jailed: Jail,  # noqa: F811 - the fixture
) -> None:
    if not jailed.cgroups:
        reason = "no cgroup v1 memory/pids groups here: only per-process limits (docs/security.md)"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    # 8 children of 64 MB each: twice the 256 MB limit of the worker (sandbox_memory_mb)
    status, answer = await attempt(hostile, "hoard", children=8, mb=64)
    if status == 200:  # the cgroup's OOM killer took some of the children
        assert answer["alive"] * 64 < 256, answer
    else:  # or the worker itself: the call fails, the worker is replaced
        assert status == 500, answer
        assert "SIGKILL" in str(answer), answer
    status, answer = await attempt(hostile, "read", path="/etc/hostname")
    assert status == 200, answer  # the next call is answered (by a fresh worker if need be)


async def test_top_level_code_at_upload_cannot_reach_the_server(
    hostile: Running, tmp_path: Path
) -> None:
    marker = tmp_path / "data" / "written-at-upload"
    environ = f"/proc/{os.getpid()}/environ"
    code = (
        "try:\n"
        f"    secret = open({environ!r}, 'rb').read()\n"
        "except OSError as exc:\n"
        "    secret = repr(exc).encode()\n"
        "try:\n"
        f"    open({str(marker)!r}, 'wb').write(secret)\n"
        "except OSError:\n"
        "    pass\n"
        "class AIOSv1PolicyRule:\n"
        "    def __init__(self, rule_id, settings, parameters):\n"
        "        pass\n"
        "    def eval(self, parameters, input_data, context):\n"
        "        return {}\n"
    )
    await put_policy(hostile, "upload-time", code.encode(), "function.py")
    assert not marker.exists()


async def test_the_policy_runs_as_the_sandbox_user_in_its_own_pid_namespace(
    hostile: Running,
) -> None:
    status, answer = await attempt(hostile, "whoami")
    assert status == 200, answer
    sandbox = pwd.getpwnam(SANDBOX_USER)
    assert (answer["uid"], answer["gid"]) == (sandbox.pw_uid, sandbox.pw_gid)
    assert [pid for pid in answer["pids"] if pid.isdigit()] == ["1", "2"]


async def test_a_slow_policy_cannot_take_every_worker() -> None:
    """Two slow calls of one policy on a pool of two; another policy is answered meanwhile."""
    pool = SandboxPool(code_roots=(POLICIES,), size=2, limits=SandboxLimits(timeout_seconds=30))
    await pool.start()

    def call(uri: str, folder: str, mode: str | None, **parameters: Any) -> SandboxCall:
        return SandboxCall(
            uri=uri,
            code_dir=POLICIES / folder,
            rule_id="r",
            settings={},
            parameters={"mode": mode, **parameters},
            input_data={"cluster_data": {}, "inputs": {}},
            context={},
        )

    try:
        slow = [
            asyncio.create_task(
                pool.evaluate(call("slow:1", "misbehave", "sleep", seconds=3), None)
            )  # type: ignore[arg-type]
            for _ in range(2)
        ]
        for _ in range(3):  # yield: both slow calls ask for a worker before the quick one
            await asyncio.sleep(0)
        quick = await pool.evaluate(call("quick:1", "misbehave", None), None)  # type: ignore[arg-type]
        assert quick.output["mode"] is None
        assert not any(task.done() for task in slow)  # answered while both slow calls waited
        await asyncio.gather(*slow)
    finally:
        await pool.close()


async def test_policy_dir_code_runs_only_in_the_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "imported-in-the-server"
    code = tmp_path / "policies" / "operator" / "code"
    code.mkdir(parents=True)
    escape = (POLICIES / "escape" / "code" / "function.py").read_text()
    top_level = f"try:\n    open({str(marker)!r}, 'w').close()\nexcept OSError:\n    pass\n"
    (code / "function.py").write_text(top_level + escape)
    async with running_server(tmp_path / "data", policy_dir=tmp_path / "policies") as live:
        url = f"{live.url}/policies/operator:0.0-dev/management"
        async with live.http.post(url, json={"action": "whoami", "data": {}}) as response:
            assert response.status == 200, await response.text()
            answer = (await response.json())["data"]
    assert answer["uid"] == pwd.getpwnam(SANDBOX_USER).pw_uid
    assert not marker.exists()  # neither the scan nor the check imported it in the server
