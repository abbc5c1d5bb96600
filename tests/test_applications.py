"""Applications and their runtime configuration per queue (issue 12, item 1; seed 000's
``applications`` and ``app-runtime-config``): registered by admins, named by jobs, completing
them when they are accepted — the job's own settings first, then the runtime configuration's,
the application's, the queue's."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from apportion.store.db import Database
from tests.cli_helpers import as_json, cli, ok
from tests.conftest import Running, running_server
from tests.jobs_helpers import PY, refused, submit, wait_for
from tests.test_accounts import key_session

PRINT_ENV = [
    PY,
    "-c",
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items()"
    " if k.startswith('APP_')}))",
]

SOLVER: dict[str, Any] = {
    "name": "solver",
    "version": "2.1",
    "description": "prints what it was given",
    "command": PRINT_ENV,
    "env": {"APP_FROM": "application", "APP_ONLY": "application"},
    "attributes": {"features": ["meshing"]},
}


async def call(running: Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with running.http.request(method, f"{running.url}{path}", **kwargs) as response:
        return response.status, await response.json()


async def made(running: Running, method: str, path: str, body: Any, status: int = 201) -> Any:
    got, answer = await call(running, method, path, json=body)
    assert got == status, answer
    return answer


async def output_of(running: Running, job_id: str) -> dict[str, str]:
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        printed: dict[str, str] = json.loads((await response.text()).strip().splitlines()[-1])
    return printed


async def test_a_job_naming_an_application_runs_as_its_application_and_queue_say(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    await made(running, "POST", "/queues", {"name": "cad", "env": {"APP_FROM": "queue", "APP_Q": "queue"}})  # fmt: skip
    app = await made(running, "POST", "/applications", SOLVER)
    assert app["number"] == 1 and app["command"] == PRINT_ENV
    runtime = {
        "env": {"APP_FROM": "runtime", "APP_RT": "runtime"},
        "default_resources": {"vcpus": 2},
        "attributes": {"image": "registry.example/solver:2.1"},
    }
    record = await made(
        running, "PUT", "/queues/cad/applications/solver:2.1/runtime-config", runtime, 200
    )
    assert record["application"] == "solver:2.1" and record["queue"] == "cad"
    assert record["attributes"] == {"image": "registry.example/solver:2.1"}

    job_id = await submit(running, {"queue": "cad", "application": "solver"})
    done = await wait_for(running, job_id, "completed", "failed")
    assert done["status"] == "completed", done
    config = done["config"]
    assert config["application"] == "solver:2.1"  # the one version, named in full
    assert config["command"] == PRINT_ENV
    assert config["resources"]["vcpus"] == 2
    assert config["image"] == "registry.example/solver:2.1"  # for adapters that run containers
    # the runtime configuration's variable beats the application's, which beats the queue's
    assert await output_of(running, job_id) == {
        "APP_FROM": "runtime",
        "APP_ONLY": "application",
        "APP_RT": "runtime",
        "APP_Q": "queue",
    }

    # what the job sets itself wins over all of them
    own = {
        "queue": "cad",
        "application": "solver:2.1",
        "env": {"APP_FROM": "job"},
        "resources": {"vcpus": 1},
    }
    job_id = await submit(running, own)
    done = await wait_for(running, job_id, "completed", "failed")
    assert done["config"]["resources"]["vcpus"] == 1
    assert (await output_of(running, job_id))["APP_FROM"] == "job"

    # in a queue without a runtime configuration, only the application's own settings apply
    job_id = await submit(running, {"application": "solver:2.1"})
    done = await wait_for(running, job_id, "completed", "failed")
    assert done["config"]["resources"]["vcpus"] is None
    assert await output_of(running, job_id) == {"APP_FROM": "application", "APP_ONLY": "application"}  # fmt: skip


async def test_a_job_gives_its_own_command_and_names_what_is_missing(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    await made(running, "POST", "/applications", SOLVER)
    await made(running, "POST", "/applications", {**SOLVER, "version": "3.0"})
    await made(running, "POST", "/applications", {"name": "bare", "version": "1"})

    answer = await refused(running, {"application": "solver"})  # two versions: which one?
    assert answer["error"]["details"]["path"] == "body.config.application"
    assert "has versions 2.1, 3.0" in answer["message"] and "solver:VERSION" in answer["message"]
    answer = await refused(running, {"application": "nothing:1"})
    assert answer["error"]["details"]["path"] == "body.config.application"
    answer = await refused(running, {"application": "bare:1"})  # no command of its own
    assert answer["error"]["details"]["path"] == "body.config.command"
    assert "bare:1 has no command" in answer["message"]
    answer = await refused(running, {"name": "nothing-to-run"})
    assert answer["error"]["details"]["path"] == "body.config.command"
    answer = await refused(running, {"application": "solver:2.1:extra", "command": ["true"]})
    assert answer["error"]["details"]["path"] == "body.config.application"

    # a command of the job's own replaces the application's
    job_id = await submit(running, {"application": "bare:1", "command": [PY, "-c", "print(1)"]})
    done = await wait_for(running, job_id, "completed", "failed")
    assert done["status"] == "completed" and done["config"]["application"] == "bare:1"


async def test_applications_are_registered_changed_and_deleted_by_admins(
    running: Running,
) -> None:
    first = await made(running, "POST", "/applications", SOLVER)
    got, answer = await call(running, "POST", "/applications", json=SOLVER)
    assert got == 409 and "solver:2.1 exists" in answer["message"]
    got, answer = await call(running, "POST", "/applications", json={**SOLVER, "kpis": []})
    assert got == 400 and answer["error"]["details"]["path"] == "body.kpis"
    got, answer = await call(running, "POST", "/applications", json={**SOLVER, "version": "../x"})
    assert got == 400 and answer["error"]["details"]["path"] == "body.version"

    changed = await made(running, "PUT", "/applications", {**SOLVER, "description": "v2"}, 200)
    assert (changed["id"], changed["number"], changed["description"]) == (first["id"], 1, "v2")
    for key in (first["id"], "solver:2.1", "solver"):
        status, found = await call(running, "GET", f"/applications/{key}")
        assert status == 200 and found["description"] == "v2"
    got, answer = await call(running, "PUT", "/applications", json={**SOLVER, "version": "9"})
    assert got == 404

    reader = await key_session(running, name="reader", scope="read")
    submitter = await key_session(running, name="submitter", scope="submit")
    async with reader, submitter:
        async with reader.get(f"{running.url}/applications") as response:
            assert [a["name"] for a in await response.json()] == ["solver"]
        async with submitter.post(f"{running.url}/applications", json=SOLVER) as response:
            assert response.status == 403
        path = "/queues/default/applications/solver/runtime-config"
        async with submitter.put(f"{running.url}{path}", json={}) as response:
            assert response.status == 403
        async with submitter.delete(f"{running.url}/applications/solver") as response:
            assert response.status == 403

    # a deleted application's number is never given again
    second = await made(running, "POST", "/applications", {"name": "other", "version": "1"})
    await made(running, "DELETE", f"/applications/{second['id']}", None, 200)
    third = await made(running, "POST", "/applications", {"name": "third", "version": "1"})
    assert (second["number"], third["number"]) == (2, 3)


async def test_runtime_configurations_follow_their_queue_and_application(
    running: Running,
) -> None:
    await made(running, "POST", "/queues", {"name": "small", "maximum_resources": {"vcpus": 4}})
    await made(running, "POST", "/queues", {"name": "big"})
    await made(running, "POST", "/applications", SOLVER)
    await made(running, "POST", "/applications", {"name": "post", "version": "1", "command": ["true"]})  # fmt: skip
    path = "/queues/{}/applications/{}/runtime-config"

    got, answer = await call(
        running, "PUT", path.format("small", "solver"), json={"default_resources": {"vcpus": 8}}
    )
    assert got == 400 and answer["error"]["details"]["path"] == "body.default_resources.vcpus"
    assert "maximum_resources.vcpus 4" in answer["message"]
    got, answer = await call(running, "PUT", path.format("small", "solver"), json={"image": "x"})
    assert got == 400 and answer["error"]["details"]["path"] == "body.image"
    got, answer = await call(running, "PUT", path.format("nowhere", "solver"), json={})
    assert got == 404
    got, answer = await call(running, "PUT", path.format("small", "nothing:1"), json={})
    assert got == 404

    for queue, app in (("small", "solver"), ("big", "solver"), ("big", "post")):
        await made(running, "PUT", path.format(queue, app), {"working_dir": f"/srv/{queue}"}, 200)
    got, everything = await call(running, "GET", "/runtime-configs")
    assert [(r["queue"], r["application"]) for r in everything] == [
        ("big", "solver:2.1"),
        ("big", "post:1"),
        ("small", "solver:2.1"),
    ]
    got, of_big = await call(running, "GET", "/runtime-configs", params={"queue": "big"})
    assert [r["application"] for r in of_big] == ["solver:2.1", "post:1"]
    got, of_post = await call(running, "GET", "/runtime-configs", params={"application": "post"})
    assert [r["queue"] for r in of_post] == ["big"]
    got, answer = await call(running, "GET", "/runtime-configs", params={"app": "post"})
    assert got == 400 and "app" in answer["message"]

    # deleting one pair, a queue, or an application forgets its runtime configurations
    await made(running, "DELETE", path.format("small", "solver"), None, 200)
    got, _ = await call(running, "GET", path.format("small", "solver"))
    assert got == 404
    await made(running, "DELETE", "/queues/big", None, 200)
    await made(running, "POST", "/queues", {"name": "big"})
    got, everything = await call(running, "GET", "/runtime-configs")
    assert everything == []
    await made(running, "PUT", path.format("small", "post"), {}, 200)
    await made(running, "DELETE", "/applications/post:1", None, 200)
    got, everything = await call(running, "GET", "/runtime-configs")
    assert everything == []


async def test_applications_and_numbers_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        await made(live, "POST", "/applications", SOLVER)
        await made(live, "PUT", "/queues/default/applications/solver/runtime-config", {"env": {"APP_RT": "1"}}, 200)  # fmt: skip
        await made(live, "POST", "/queues", {"name": "gone"})
        await made(live, "DELETE", "/queues/gone", None, 200)
    async with running_server(data) as live:
        got, record = await call(live, "GET", "/queues/default/applications/solver:2.1/runtime-config")  # fmt: skip
        assert got == 200 and record["env"] == {"APP_RT": "1"}
        await made(live, "POST", "/queues", {"name": "later"})
        service = live.server.context.jobs  # type: ignore[union-attr]
        assert service is not None
        # default was 1, gone 2 (deleted): later is 3, not 2 again
        numbers = {name: service.queues.entry(name).number for name in service.queues.names()}
        assert numbers == {"default": 1, "later": 3}


async def test_queues_made_before_numbers_are_numbered_in_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / "apportion.db"
    db = await Database.open(f"sqlite:///{path}")
    await db.close()
    with sqlite3.connect(path) as conn:  # back to version 6, with three queues
        conn.execute("DROP TABLE app_runtime_configs")
        conn.execute("DROP TABLE applications")
        conn.execute("DROP TABLE counters")
        conn.execute("DROP INDEX ux_queues_seq")
        conn.execute("ALTER TABLE queues DROP COLUMN seq")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 7")
        for queue_id, name, made_at in (("q2", "second", 2.0), ("q1", "first", 1.0), ("q3", "third", 3.0)):  # fmt: skip
            conn.execute(
                "INSERT INTO queues (id, name, document, created_at, updated_at)"
                " VALUES (?, ?, '{}', ?, ?)",
                (queue_id, name, made_at, made_at),
            )
    db = await Database.open(f"sqlite:///{path}")
    await db.close()
    with sqlite3.connect(path) as conn:
        numbered = conn.execute("SELECT name, seq FROM queues ORDER BY seq").fetchall()
        counter = conn.execute("SELECT value FROM counters WHERE name = 'queues'").fetchone()
    assert numbered == [("first", 1), ("second", 2), ("third", 3)]
    assert counter == (3,)


async def test_the_cli_registers_sets_up_and_submits_an_application(
    running: Running, fleet: list[dict[str, Any]], tmp_path: Path
) -> None:
    app_file = tmp_path / "solver.json"
    app_file.write_text(json.dumps(SOLVER))
    said = ok(await cli(running, "applications", "create", str(app_file)))
    assert said.strip() == "Registered application solver:2.1 (number 1)"
    runtime = json.dumps({"env": {"APP_RT": "cli"}, "default_resources": {"vcpus": 1}})
    said = ok(await cli(running, "applications", "set-runtime", "default", "solver:2.1", runtime))
    assert said.strip() == "Set how solver:2.1 runs in queue default"
    table = ok(await cli(running, "applications", "list"))
    assert "solver:2.1" in table and "prints what it was given" in table
    listed = as_json(await cli(running, "applications", "runtimes", "-o", "json"))
    assert [(r["queue"], r["application"], r["default_resources"]) for r in listed] == [
        ("default", "solver:2.1", {"vcpus": 1})
    ]

    job_id = ok(await cli(running, "submit", "--parsable", "--application", "solver:2.1")).strip()
    done = await wait_for(running, job_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert (await output_of(running, job_id))["APP_RT"] == "cli"

    spec = tmp_path / "job.toml"
    spec.write_text('application = "solver:2.1"\nname = "from-file"\n')
    job_id = ok(await cli(running, "submit", "--parsable", str(spec))).strip()
    done = await wait_for(running, job_id, "completed", "failed")
    assert (done["config"]["name"], done["config"]["application"]) == ("from-file", "solver:2.1")

    unknown = await cli(running, "submit", "--application", "nothing:1")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("apportion: --application:")
    nothing = await cli(running, "submit")
    assert nothing.exit_code == 2 and "--application" in nothing.stderr
    bad = await cli(running, "applications", "create", '{"name": "x"}')
    assert bad.exit_code == 1 and "version" in bad.stderr

    ok(await cli(running, "applications", "unset-runtime", "default", "solver:2.1"))
    ok(await cli(running, "applications", "delete", "solver:2.1"))
    assert as_json(await cli(running, "applications", "list", "-o", "json")) == []
