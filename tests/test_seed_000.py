"""Seed 000's surface (the AVxcelerate Resource Manager's ``/api/resources/v1``), driven the
way its documentation's walk-through does (issue 12): create a queue with a worker cap, find
the application, map it to the queue with an app-runtime-config, submit jobs by integer ids,
follow their status, read job-stats, clean — and the worker-cap example of its docs (a cap of
10: a 10-worker job runs, an 8-worker job waits until it ends). Real server, real local
adapter, the real job user."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Running
from tests.jobs_helpers import PY

API = "/api/resources/v1"

WAITS_FOR_GATE = (
    "import os, sys, time\n"
    "end = time.monotonic() + 120\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < end:\n"
    "    time.sleep(0.05)\n"
    "print(os.environ.get('AVX_MODE'), os.environ['APPORTION_NUM_WORKERS'])\n"
    "sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)"
)


async def call(running: Running, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with running.http.request(method, f"{running.url}{API}{path}", **kwargs) as response:
        return response.status, await response.json()


async def made(running: Running, method: str, path: str, body: Any, status: int = 201) -> Any:
    got, answer = await call(running, method, path, json=body)
    assert got == status, answer
    return answer


async def until(running: Running, job: int, status: str) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    for _ in range(600):
        _, answer = await call(running, "GET", f"/jobs/{job}")
        if answer["status"] == status:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job} never reached {status}: {answer}")


QUEUE = {
    "name": "local-queue",
    "description": "the docs' example queue",
    "plugin": "local",
    "default_resources": {"cpu": 1, "memory_gb": 0.5},
    "maximum_allowed_worker_instances": 10,
    "attributes": {"namespace": "avx-autonomy"},
    "storages": [],
    "env": {"AVX_TELEMETRY_ENABLE": "false"},
}


async def test_the_walk_through_of_seed_000s_documentation(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    # a queue, by integer id; replaced by name
    queue_id = await made(running, "POST", "/queues", QUEUE)
    assert isinstance(queue_id, int)
    changed = await made(running, "PUT", "/queues", {**QUEUE, "description": "changed"}, 200)
    assert changed == queue_id
    _, queue = await call(running, "GET", f"/queues/{queue_id}")
    assert queue["id"] == queue_id and queue["description"] == "changed"
    assert queue["default_resources"] == {"cpu": 1, "memory_gb": 0.5}
    assert queue["maximum_allowed_worker_instances"] == 10

    # the application, then its runtime configuration in the queue
    app = {
        "name": "simulation",
        "version": "25R2",
        "application_type": "worker",
        "attributes": {"command": [PY, "-c", WAITS_FOR_GATE], "features": ["sensors"]},
    }
    app_id = await made(running, "POST", "/applications", app)
    _, found = await call(running, "GET", f"/applications/{app_id}")
    assert found["attributes"] == app["attributes"] and found["application_type"] == "worker"
    runtime = {
        "env": {"AVX_MODE": "test"},
        "default_resources": None,
        "attributes": {"image": "registry.example/avx/exec:25R2"},
        "service_port": 8080,
    }
    path = f"/app-runtime-config/{queue_id}/application/{app_id}"
    stored = await made(running, "POST", path, runtime)
    assert (stored["queue_id"], stored["app_id"], stored["service_port"]) == (
        queue_id,
        app_id,
        8080,
    )
    got, again = await call(running, "POST", path, json=runtime)
    assert got == 409 and "replace it with PUT" in again["message"]
    await made(running, "PUT", path, runtime, 200)
    _, listed = await call(running, "GET", "/app-runtime-config", params={"queue_id": queue_id})
    assert [(r["app_id"], r["attributes"]) for r in listed] == [(app_id, runtime["attributes"])]
    _, of_app = await call(running, "GET", f"/app-runtime-config/application/{app_id}")
    assert [r["queue_id"] for r in of_app] == [queue_id]

    # the worker cap: 10 workers run, a job of 8 waits until they end
    gate = job_tmp / "gate"
    ten = {"name": "job A", "queue_id": queue_id, "application_id": app_id,
           "arguments": [str(gate)], "replica_count": 10}  # fmt: skip
    first = await made(running, "POST", "/jobs", ten)
    second = await made(running, "POST", "/jobs", {**ten, "name": "job B", "replica_count": 8})
    assert isinstance(first, int) and second == first + 1
    await until(running, first, "running")
    await asyncio.sleep(0.5)  # admission cycles pass: the second still waits
    _, status = await call(running, "GET", f"/jobs/{second}/status")
    assert status == "pending"
    _, waiting = await call(running, "GET", f"/jobs/{second}")
    assert waiting["replica_count"] == 8 and waiting["arguments"] == [str(gate)]
    assert waiting["application_id"] == app_id and waiting["queue_id"] == queue_id
    assert waiting["name"] == "job-B"  # a job name Apportion takes
    gate.touch()
    done = await until(running, first, "succeeded")
    assert done["cleaned"] is False
    await until(running, second, "succeeded")
    _, stats = await call(running, "GET", f"/jobs/{first}/job-stats")
    assert stats == {"containers": {"worker": {"name": "worker", "exit_codes": {"0": 10}}}}

    # its output says the runtime configuration's env reached it
    internal = done["internal_id"]
    async with running.http.get(f"{running.url}/jobs/{internal}/logs?worker=0") as response:
        assert (await response.text()).strip() == "test 10"

    # a child job that fails: failed, with its exit code counted
    child_job = {
        **ten,
        "name": "child",
        "replica_count": 1,
        "arguments": [str(gate), "3"],
        "parent_job_id": first,
        "labels": {"stage": "post"},
        "attributes": {"kpi": "x"},
    }
    child = await made(running, "POST", "/jobs", child_job)
    failed = await until(running, child, "failed")
    assert failed["parent_job_id"] == first and failed["failed_reason"]
    assert failed["labels"] == {"stage": "post"} and failed["attributes"] == {"kpi": "x"}
    _, stats = await call(running, "GET", f"/jobs/{child}/job-stats")
    assert stats["containers"]["worker"]["exit_codes"] == {"3": 1}

    # listings filtered as its clients filter them, and paged
    _, eight = await call(running, "GET", "/jobs", params={"filter_exp": "replica_count eq 8"})
    assert [j["id"] for j in eight] == [second]
    query = {"filter_exp": "status eq 'succeeded' or parent_job_id eq " + str(first)}
    _, some = await call(running, "GET", "/jobs", params=query)
    assert [j["id"] for j in some] == [first, second, child]
    _, page = await call(running, "GET", "/jobs", params={"offset": 1, "limit": 1})
    assert [j["id"] for j in page] == [second]

    # clean: the job's own directory goes, its record says so
    _, cleaned = await call(running, "POST", f"/jobs/{first}/clean")
    assert cleaned["cleaned"] is True and cleaned["id"] == first


async def test_what_seed_000_refuses_names_its_field(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    queue_id = await made(running, "POST", "/queues", QUEUE)
    app_id = await made(
        running, "POST", "/applications", {"name": "a", "version": "1", "attributes": {}}
    )
    job = {"name": "j", "queue_id": queue_id, "application_id": app_id, "arguments": ["true"]}

    for body, field in (
        ({**QUEUE, "name": "q2", "plugin": "kubernetes_apisix"}, "body.plugin"),
        ({k: v for k, v in QUEUE.items() if k != "description"}, "body.description"),
        ({**QUEUE, "name": "q3", "default_resources": {"cpus": 1}}, "body.default_resources.cpus"),
    ):
        got, answer = await call(running, "POST", "/queues", json=body)
        assert got == 400 and answer["error"]["details"]["path"] == field, answer
    for body, field in (
        ({**job, "queue_id": 999}, "body.queue_id"),
        ({**job, "application_id": 999}, "body.application_id"),
        ({**job, "parent_job_id": 999}, "body.parent_job_id"),
        ({**job, "replica_count": 11}, "body.replica_count"),  # over the queue's cap of 10
        ({**job, "arguments": []}, "body.arguments"),  # the application has no command
        ({**job, "priority": 3}, "body.priority"),
    ):
        got, answer = await call(running, "POST", "/jobs", json=body)
        assert got == 400 and answer["error"]["details"]["path"] == field, answer
    got, answer = await call(running, "POST", "/jobs", json={**job, "replica_count": 11})
    assert "replica_count 11" in answer["message"] and "config." not in answer["message"]

    got, answer = await call(running, "GET", "/jobs", params={"filter_exp": "contains(name,'a')"})
    assert got == 400 and answer["error"]["details"]["path"] == "query.filter_exp"
    got, answer = await call(running, "GET", "/jobs", params={"filter": "x"})
    assert got == 400 and "filter" in answer["message"]
    got, answer = await call(running, "GET", "/queues", params={"limit": 101})
    assert got == 400
    got, _ = await call(running, "GET", "/jobs/not-a-number")
    assert got == 404
    got, answer = await call(running, "POST", "/plugins", json={"name": "k8s"})
    assert got == 400 and "installed on the server" in answer["message"]
    _, plugins = await call(running, "GET", "/plugins")
    local = next(p for p in plugins if p["name"] == "local")
    assert local["module_name"] and local["class_name"] and local["attributes"]["available"]


async def test_health_is_public_and_jobs_of_another_account_are_unknown(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{running.url}{API}/health") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}
        async with anonymous.get(f"{running.url}{API}/jobs") as response:
            assert response.status == 401
    queue_id = await made(running, "POST", "/queues", QUEUE)
    app_id = await made(
        running, "POST", "/applications", {"name": "a", "version": "1", "attributes": {}}
    )
    job = {"name": "j", "queue_id": queue_id, "application_id": app_id, "arguments": [PY, "-c", ""]}
    job_id = await made(running, "POST", "/jobs", job)
    async with running.http.post(f"{running.url}/accounts", json={"name": "other"}) as response:
        assert response.status == 201
    body = {"name": "o", "scope": "submit", "account": "other"}
    async with running.http.post(f"{running.url}/keys", json=body) as response:
        key = (await response.json())["data"]["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as other:
        async with other.get(f"{running.url}{API}/jobs/{job_id}") as response:
            assert response.status == 404
        async with other.get(f"{running.url}{API}/jobs") as response:
            assert await response.json() == []
        async with other.post(f"{running.url}{API}/jobs/{job_id}/clean") as response:
            assert response.status == 404
