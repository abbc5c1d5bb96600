"""Jobs on servers sharing one PostgreSQL database (issue 11, item 3): only the leader runs
them, every server answers their routes (forwarded to the leader), a leader's writes are
fenced by its term, and when the leader is SIGKILLed in the middle of dispatches another takes
over and every accepted job runs exactly once. Server processes of their own, a real
PostgreSQL; the jobs are real processes of the local executor, which the servers of this host
share through the jobs root (docs/operations.md)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from apportion.errors import Unavailable
from apportion.files import FileBook, FilesConfig, FileType
from apportion.jobs.fairshare import UsageBook
from apportion.jobs.models import JobConfig
from apportion.jobs.records import JobBook
from apportion.ownership import DEFAULT_ACCOUNT, Owner
from apportion.store import notices
from apportion.store.db import Database
from apportion.store.turns import NotLeading, fence
from tests import builders
from tests.conftest import Running, running_server
from tests.jobs_helpers import PY, job, statuses, submit
from tests.replica_servers import ServerProcess, server_processes
from tests.test_files import TEXT, upload

WEEK = 7 * 86400.0


async def role(server: Running) -> str:
    async with server.http.get(f"{server.url}/system/status") as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["role"])


async def roles(servers: list[ServerProcess]) -> tuple[ServerProcess, list[ServerProcess]]:
    """The leader and the followers (each asked for its role)."""
    named = [await role(s.running) for s in servers]
    assert sorted(named) == ["follower"] * (len(servers) - 1) + ["leader"], named
    leader = servers[named.index("leader")]
    return leader, [s for s in servers if s is not leader]


async def finished(server: Running, job_ids: list[str], within: float) -> list[dict[str, Any]]:
    """Every job's record once all ended, asked through ``server`` (503s of a takeover are
    waited out: retryable)."""
    deadline = time.monotonic() + within
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        async with server.http.get(f"{server.url}/jobs?limit=1000") as response:
            if response.status == 503:
                assert (await response.json())["error"]["details"]["retryable"]
                await asyncio.sleep(0.2)
                continue
            assert response.status == 200, await response.text()
            records = [r for r in await response.json() if r["job_id"] in job_ids]
        if len(records) == len(job_ids) and all(
            r["status"] in ("completed", "failed", "cancelled") for r in records
        ):
            return records
        await asyncio.sleep(0.2)
    states = sorted(r["status"] for r in records)
    raise AssertionError(f"not every job ended within {within} s: {states}")


def marker_command(marker: Path, seconds: float) -> list[str]:
    """A job that runs ``seconds``, then appends one line: the line count is how often it ran."""
    code = f"import time; time.sleep({seconds}); open({str(marker)!r}, 'a').write('ran\\n')"
    return [PY, "-c", code]


async def test_the_leader_runs_the_jobs_and_every_server_answers_their_routes(
    tmp_path: Path, postgres_db: str, job_tmp: Path
) -> None:
    async with server_processes(tmp_path, postgres_db, 3) as servers:
        leader, (first, second) = await roles(servers)
        doc = builders.make_cluster("c1", nodes=1, gpus=4)
        async with first.running.http.post(f"{first.running.url}/clusters", json=doc) as r:
            assert r.status == 201, await r.text()

        marker = job_tmp / "ran.txt"
        job_id = await submit(first.running, {"command": marker_command(marker, 0)})
        (record,) = await finished(second.running, [job_id], within=60)
        assert record["status"] == "completed", record
        assert marker.read_text() == "ran\n"
        # the same record through each server: one job service, the leader's
        for server in servers:
            assert (await job(server.running, job_id))["status"] == "completed"
        assert await statuses(second.running, job_id) == [
            "queued",
            "scheduled",
            "running",
            "completed",
        ]
        # a queue made through a follower is the leader's
        async with second.running.http.post(
            f"{second.running.url}/queues", json={"name": "made-elsewhere"}
        ) as response:
            assert response.status == 201, await response.text()
        async with leader.running.http.get(f"{leader.running.url}/queues") as response:
            names = [q["name"] for q in (await response.json())]
        assert "made-elsewhere" in names
        # a follower checks the key itself before it forwards
        async with first.running.http.get(
            f"{first.running.url}/jobs", headers={"Authorization": "Bearer not-a-key"}
        ) as response:
            assert response.status == 401


async def test_a_leader_killed_in_the_middle_of_dispatches_every_accepted_job_runs_once(
    tmp_path: Path, postgres_db: str, job_tmp: Path
) -> None:
    jobs = 24
    async with server_processes(tmp_path, postgres_db, 3) as servers:
        leader, followers = await roles(servers)
        doc = builders.make_cluster("c1", nodes=1, gpus=4)  # four at a time: dispatches go on
        async with followers[0].running.http.post(
            f"{followers[0].running.url}/clusters", json=doc
        ) as response:
            assert response.status == 201, await response.text()
        stored = await upload(followers[1].running.http, followers[1].running.url)
        assert stored[0] == 201, stored
        markers = [job_tmp / f"ran-{i}.txt" for i in range(jobs)]
        job_ids = [
            await submit(
                followers[i % 2].running,
                {"command": marker_command(marker, 0.3), "resources": {"gpus": 1}},
            )
            for i, marker in enumerate(markers)
        ]
        # once some have run and others wait: the leader dies between dispatches
        for _ in range(3000):
            if sum(1 for m in markers if m.exists()) >= 4:
                break
            await asyncio.sleep(0.02)
        leader.process.send_signal(signal.SIGKILL)
        await leader.process.wait()
        unfinished = sum(1 for m in markers if not m.exists())
        assert unfinished >= jobs // 2, "the leader died after most jobs ran: not the middle"

        records = await finished(followers[0].running, job_ids, within=120)
        assert [r["status"] for r in records] == ["completed"] * jobs, records
        await asyncio.sleep(0.5)  # a second run, had there been one, would have written by now
        runs = [m.read_text().count("ran") for m in markers]
        assert runs == [1] * jobs, f"runs per job: {runs}"
        assert {await role(s.running) for s in followers} == {"leader", "follower"}
        # a file stored through the dead leader is the new one's (the jobs root's .files)
        contents = f"{followers[0].running.url}/files/{stored[1]['id']}/contents"
        async with followers[0].running.http.get(contents, headers={"Range": "bytes=0-6"}) as r:
            assert r.status == 206 and r.headers["Content-Range"] == f"bytes 0-6/{len(TEXT)}"
            assert await r.read() == TEXT[:7]


async def test_a_leader_whose_term_ended_writes_no_job_or_file_record(
    postgres_db: str, tmp_path: Path
) -> None:
    db = await Database.open(postgres_db)
    try:
        async with db.write() as conn:  # the row as two takeovers leave it: term 2 leads
            await conn.exec_driver_sql(
                "INSERT INTO leadership (id, epoch, url, since) VALUES (1, 2, 'http://b', 0)"
            )
        config = {"command": ["/bin/true"]}
        old = JobBook(db, usage=UsageBook(WEEK), fence=fence(1))
        new = JobBook(db, usage=UsageBook(WEEK), fence=fence(2))
        owner = Owner(DEFAULT_ACCOUNT, None, None)
        with pytest.raises(NotLeading) as refused:
            await old.create(JobConfig.model_validate(config), 0, owner, "submitted")
        assert isinstance(refused.value, Unavailable)
        assert "term 1 ended; term 2 began" in refused.value.message
        written = await new.create(JobConfig.model_validate(config), 0, owner, "submitted")
        reread = JobBook(db, usage=UsageBook(WEEK))
        await reread.load()
        assert list(reread.jobs) == [written.job_id]  # the old term's job is not there
        await old.close()
        await new.close()

        async def content() -> AsyncIterator[bytes]:
            yield b"stored by an old leader"

        files = FileBook(db, tmp_path / "files", FilesConfig(), fence=fence(1))
        await files.load()
        with pytest.raises(NotLeading):
            await files.receive(owner, "late.txt", FileType.INPUT, content())
        assert list((tmp_path / "files").iterdir()) == []  # nor its content
        stored = FileBook(db, tmp_path / "files", FilesConfig())
        await stored.load()  # the records in the database
        assert stored.visible(lambda _: True) == []
    finally:
        await db.close()


async def test_a_follower_that_cannot_reach_the_leader_answers_retryably(
    tmp_path: Path, postgres_db: str
) -> None:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_server(tmp_path / "a", db=postgres_db))
        second = await stack.enter_async_context(running_server(tmp_path / "b", db=postgres_db))
        assert [await role(first), await role(second)] == ["leader", "follower"]

        async def jobs_through_second(**headers: str) -> tuple[int, Any]:
            async with second.http.get(f"{second.url}/jobs", headers=headers) as response:
                return response.status, await response.json()

        assert (await jobs_through_second())[0] == 200  # forwarded to the first
        # a request another server forwarded is never forwarded again (no loop between two
        # servers that each think the other leads)
        status, answer = await jobs_through_second(**{"X-Apportion-Forwarded-By": first.url})
        assert status == 503 and answer["error"]["details"]["retryable"], answer
        # the leader's row names an address nobody answers at, and says so as a takeover does
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            nobody = f"http://127.0.0.1:{probe.getsockname()[1]}"

        async def point_the_row_at(url: str) -> None:
            async with conn.transaction():
                await conn.execute("UPDATE leadership SET url = $1", url)
                await conn.execute("SELECT pg_notify($1, 'leader take 99')", notices.CHANNEL)

        async def second_answers(status: int) -> tuple[int, Any]:
            for _ in range(500):  # until the second has heard the notice
                got = await jobs_through_second()
                if got[0] == status:
                    return got
                await asyncio.sleep(0.01)
            raise AssertionError(f"the second answers {got}, not {status}")

        conn = await asyncpg.connect(postgres_db)
        try:
            await point_the_row_at(nobody)
            _, answer = await second_answers(503)
            assert answer["error"]["details"]["retryable"], answer
            assert f"the server that runs them ({nobody}) did not answer" in answer["message"]
            await point_the_row_at(first.url)
            await second_answers(200)
        finally:
            await conn.close()


async def test_a_leader_that_stops_cleanly_hands_the_jobs_over_without_the_grace(
    tmp_path: Path, postgres_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apportion.jobs.duty")
    async with running_server(tmp_path / "a", db=postgres_db) as first:
        assert await role(first) == "leader"
        async with running_server(tmp_path / "b", db=postgres_db) as second:
            assert await role(second) == "follower"
            job_id = await submit(second, {"command": ["/bin/true"]})  # forwarded to the first
    stopped_at = len(caplog.records)  # the first stopped: it stepped down
    async with running_server(tmp_path / "c", db=postgres_db) as third:
        assert await role(third) == "leader"
        assert (await job(third, job_id))["job_id"] == job_id  # read at its takeover
    said = [r.getMessage() for r in caplog.records[stopped_at:]]
    assert not [m for m in said if "did not step down" in m], said  # no grace waited
