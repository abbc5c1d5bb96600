"""Accounts (issue 9, item 1): created by admins, named by keys, migrated into, and each
mapped to the OS user its jobs run as — real OS users, created by ``make test``
(``scripts/tenant_user.sh``): ``apportion-jobs`` (the server's job user) and
``apportion-tenant-b`` (a second tenant's). Not root, or without those users, the tests that
switch users skip and say why — except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apportion.jobs.identity import JobIdentity
from apportion.ownership import DEFAULT_ACCOUNT
from apportion.store.db import Database
from apportion.store.migrations import MIGRATIONS
from tests.conftest import Running, running_server
from tests.jobs_helpers import PY, submit, wait_for

TENANT_B_USER = "apportion-tenant-b"


async def post(running: Running, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with running.http.post(f"{running.url}{path}", json=body) as response:
        return response.status, await response.json()


async def key_session(running: Running, **body: Any) -> aiohttp.ClientSession:
    status, answer = await post(running, "/keys", body)
    assert status == 201, answer
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {answer['data']['api_key']}"})


# ---------------------------------------------------------------- the REST surface


async def test_the_default_account_exists_and_keys_name_their_account_and_user(
    running: Running,
) -> None:
    async with running.http.get(f"{running.url}/accounts") as response:
        accounts = (await response.json())["data"]
    assert [a["name"] for a in accounts] == [DEFAULT_ACCOUNT]
    status, created = await post(running, "/accounts", {"name": "team-a", "description": "A"})
    assert status == 201, created
    assert created["data"]["os_user"] is None and created["data"]["description"] == "A"
    status, issued = await post(
        running, "/keys", {"name": "laptop", "account": "team-a", "user": "alice"}
    )
    assert status == 201, issued
    assert (issued["data"]["account"], issued["data"]["user"]) == ("team-a", "alice")
    async with running.http.get(f"{running.url}/keys") as response:
        listed = {k["name"]: k for k in (await response.json())["data"]}
    assert (listed["laptop"]["account"], listed["laptop"]["user"]) == ("team-a", "alice")
    admin = listed["admin (given at start)"]
    assert (admin["account"], admin["user"]) == (DEFAULT_ACCOUNT, "admin (given at start)")
    async with await key_session(running, name="bob", account="team-a") as bob:
        async with bob.get(f"{running.url}/auth/whoami") as response:
            whoami = await response.json()
        assert (whoami["account"], whoami["user"]) == ("team-a", "bob")  # user: the key's name
        async with bob.get(f"{running.url}/accounts/team-a") as response:
            assert (await response.json())["data"]["name"] == "team-a"
        async with bob.get(f"{running.url}/accounts/default") as response:
            assert response.status == 404  # another account: as an unknown one
        async with bob.get(f"{running.url}/accounts") as response:
            assert response.status == 403  # listing every account is for operators


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({"name": "Team A"}, 400, "body.name"),
        ({"name": "-a"}, 400, "body.name"),
        ({"name": "a" * 65}, 400, "body.name"),
        ({"name": "team-x", "os_user": "no-such-user-here"}, 400, "body.os_user"),
        ({"name": "team-x", "os_user": "root"}, 400, "body.os_user"),
        ({"name": "team-x", "colour": "red"}, 400, "body.colour"),
        ({"name": DEFAULT_ACCOUNT}, 409, None),
    ],
)
async def test_a_bad_account_is_refused_naming_the_field(
    running: Running, body: dict[str, Any], status: int, path: str | None
) -> None:
    got, answer = await post(running, "/accounts", body)
    assert got == status, answer
    assert answer["error"]["details"].get("path") == path
    async with running.http.get(f"{running.url}/accounts") as response:
        assert [a["name"] for a in (await response.json())["data"]] == [DEFAULT_ACCOUNT]


async def test_a_key_of_an_unknown_account_is_refused(running: Running) -> None:
    status, answer = await post(running, "/keys", {"name": "k", "account": "nobody"})
    assert status == 400, answer
    assert answer["error"]["details"]["path"] == "body.account"
    assert "POST /accounts" in answer["message"]


async def test_only_an_admin_creates_accounts(running: Running) -> None:
    async with await key_session(running, name="ops", scope="operator") as ops:
        async with ops.post(f"{running.url}/accounts", json={"name": "team-z"}) as response:
            assert response.status == 403
        async with ops.get(f"{running.url}/accounts") as response:
            assert response.status == 200


async def test_accounts_survive_a_restart(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as live:
        status, _ = await post(live, "/accounts", {"name": "team-a"})
        assert status == 201
    async with (
        running_server(tmp_path / "data") as live,
        live.http.get(f"{live.url}/accounts") as response,
    ):
        names = [a["name"] for a in (await response.json())["data"]]
    assert names == [DEFAULT_ACCOUNT, "team-a"]


# ---------------------------------------------------------------- the migration


def _as_version_2(path: Path) -> None:
    """Turn a database made by this code back into what version 2 had: no accounts table and
    none of the account and user columns."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX ix_jobs_array")  # version 9's
        conn.execute("ALTER TABLE jobs DROP COLUMN array_job_id")
        conn.execute("ALTER TABLE jobs DROP COLUMN array_task_id")
        conn.execute("ALTER TABLE jobs DROP COLUMN exit_codes")  # version 8's
        conn.execute("ALTER TABLE jobs DROP COLUMN cleaned")
        conn.execute("DROP TABLE app_runtime_configs")  # version 7's
        conn.execute("DROP TABLE applications")
        conn.execute("DROP INDEX ux_queues_seq")
        conn.execute("ALTER TABLE queues DROP COLUMN seq")
        conn.execute("DROP TABLE account_usage")  # version 4's
        conn.execute("ALTER TABLE accounts DROP COLUMN shares")
        conn.execute("ALTER TABLE jobs DROP COLUMN runs")  # version 5's
        conn.execute("ALTER TABLE jobs DROP COLUMN preempted_by")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 4")
        conn.execute("DROP TABLE accounts")
        conn.execute("DROP INDEX ix_jobs_account")
        for table, columns in {
            "api_keys": ("account", "user_name"),
            "jobs": ("account", "user_name"),
            "holds": ("account", "user_name"),
            "events": ("account",),
        }.items():
            for column in columns:
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")


async def test_keys_jobs_and_holds_of_version_2_move_into_the_default_account(
    tmp_path: Path,
) -> None:
    path = tmp_path / "apportion.db"
    db = await Database.open(f"sqlite:///{path}")
    await db.close()
    _as_version_2(path)
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, prefix, hash, scopes, created_at)"
            " VALUES ('k1', 'alice', 'k1', 'x', 'submit', ?)",
            (now,),
        )
        for job_id, seq, owner in (("j1", 1, "k1"), ("j2", 2, None)):
            conn.execute(
                "INSERT INTO jobs (job_id, seq, queue, name, status, priority, config, owner,"
                " created_at) VALUES (?, ?, 'default', 'n', 'queued', 0, '{}', ?, ?)",
                (job_id, seq, owner, now),
            )
        conn.execute(
            "INSERT INTO holds (allocation_id, owner, policy_uri, placements, created_at,"
            " expires_at) VALUES ('h1', 'k1', 'binpack:1.0-stable', '[]', ?, ?)",
            (now, now + 60),
        )
    db = await Database.open(f"sqlite:///{path}")
    await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM accounts").fetchall() == [(DEFAULT_ACCOUNT,)]
        assert conn.execute("SELECT account, user_name FROM api_keys").fetchall() == [
            (DEFAULT_ACCOUNT, "alice")
        ]
        assert conn.execute("SELECT job_id, account, user_name FROM jobs").fetchall() == [
            ("j1", DEFAULT_ACCOUNT, "alice"),
            ("j2", DEFAULT_ACCOUNT, None),
        ]
        assert conn.execute("SELECT account, user_name FROM holds").fetchall() == [
            (DEFAULT_ACCOUNT, "alice")
        ]
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert versions == [(m.version,) for m in MIGRATIONS]


# ---------------------------------------------------------------- as whom an account's jobs run


def needs_tenant_users() -> None:
    why = None
    if os.geteuid() != 0:
        why = "the server is not root, so it cannot run jobs as the accounts' users"
    else:
        for user in ("apportion-jobs", TENANT_B_USER):
            try:
                pwd.getpwnam(user)
            except KeyError:
                why = f"the OS user {user} does not exist: run `make tenant-users` as root"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)


WHO_AND_PEEK = (
    "import json, os, pwd, sys\n"
    "out = {'user': pwd.getpwuid(os.geteuid()).pw_name, 'cwd': os.getcwd()}\n"
    "open('mine.txt', 'w').write('a secret of ' + out['user'])\n"
    "for other in sys.argv[1:]:\n"
    "    try:\n"
    "        out[other] = open(other).read()\n"
    "    except OSError as exc:\n"
    "        out[other] = type(exc).__name__\n"
    "print(json.dumps(out))\n"
)


async def _run_as(session: aiohttp.ClientSession, live: Running, *peek: str) -> dict[str, Any]:
    body = {"config": {"command": [PY, "-c", WHO_AND_PEEK, *peek]}}
    async with session.post(f"{live.url}/jobs/submit", json=body) as response:
        assert response.status == 201, await response.text()
        job_id = (await response.json())["job_id"]
    record = await wait_for(live, job_id, "completed", "failed")
    async with live.http.get(f"{live.url}/jobs/{job_id}/logs") as response:
        text = await response.text()
    assert record["status"] == "completed", (record, text)
    seen: dict[str, Any] = json.loads(text)
    return seen


async def test_a_job_runs_as_its_accounts_os_user_and_cannot_read_another_accounts_files(
    running: Running, fleet: Any
) -> None:
    needs_tenant_users()
    status, answer = await post(running, "/accounts", {"name": "team-a"})
    assert status == 201, answer
    status, answer = await post(running, "/accounts", {"name": "team-b", "os_user": TENANT_B_USER})
    assert status == 201, answer
    assert answer["data"]["os_user"] == TENANT_B_USER
    async with (
        await key_session(running, name="alice", account="team-a") as alice,
        await key_session(running, name="bob", account="team-b") as bob,
    ):
        seen_a = await _run_as(alice, running)
        secret = str(Path(seen_a["cwd"]) / "mine.txt")
        seen_b = await _run_as(bob, running, secret)
    assert seen_a["user"] == "apportion-jobs"  # team-a names no user: the server's job_user
    assert seen_b["user"] == TENANT_B_USER
    assert seen_b[secret] == "PermissionError"  # team-a's job's files are not team-b's
    assert await asyncio.to_thread(Path(secret).read_text) == "a secret of apportion-jobs"


def test_an_account_whose_os_user_vanished_has_its_jobs_refused() -> None:
    # An account's os_user is checked when the account is made; a user deleted afterwards
    # refuses that account's jobs (at submit, as JobBoundary asks refusal()), not the others'.
    needs_tenant_users()
    users = {"team-b": "apportion-gone", "team-c": TENANT_B_USER}
    identity = JobIdentity("apportion-jobs", True, False, users.get)
    refusal = identity.refusal("team-b")
    assert refusal is not None and "'apportion-gone'" in refusal and "does not exist" in refusal
    assert identity.refusal("team-c") is None
    assert identity.refusal(DEFAULT_ACCOUNT) is None
    assert identity.refusal() is None


async def test_jobs_submitted_by_helpers_belong_to_the_admins_account(
    running: Running, fleet: Any
) -> None:
    job_id = await submit(running, {"command": [PY, "-c", "pass"]})
    record = await wait_for(running, job_id, "completed", "failed")
    assert (record["account"], record["user"]) == (DEFAULT_ACCOUNT, "admin (given at start)")
