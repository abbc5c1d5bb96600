"""The REST surface's one source of truth: statuses from the error classes, the OpenAPI
document from the route declarations, and query strings checked like bodies."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from pydantic import TypeAdapter

from apportion import errors
from apportion.app import PUBLIC_PATHS
from apportion.errors import ApportionError, ErrorCode
from apportion.server.dashboard import ONE_TIME_TOKENS
from apportion.server.openapi import openapi_path
from apportion.server.routing import declared_specs
from tests.conftest import Running, allocation
from tests.jobs_helpers import exiting, submit, wait_for

# every class that defines a wire code (InvalidDocument keeps InvalidRequest's code)
CODE_CLASSES = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type)
    and issubclass(cls, ApportionError)
    and cls is not ApportionError
    and "code" in cls.__dict__
]


def test_every_code_has_one_class_and_its_status() -> None:
    assert sorted(cls.code for cls in CODE_CLASSES) == sorted(ErrorCode)
    for cls in CODE_CLASSES:
        assert errors.http_status_of(cls.code.value) == cls.http_status
    assert errors.http_status_of("NoSuchCode") == 500


@pytest.mark.parametrize("cls", CODE_CLASSES, ids=lambda cls: cls.__name__)
async def test_post_allocate_answers_the_status_of_the_error_class(
    running: Running, monkeypatch: pytest.MonkeyPatch, cls: type[ApportionError]
) -> None:
    # the old second table in routes_core had no NotFound: it answered 500
    async def refuse(*_: Any) -> dict[str, Any]:
        raise cls("refused by the test")

    context = running.server.context
    assert context is not None
    monkeypatch.setattr(context.allocations, "allocate", refuse)
    async with running.http.post(f"{running.url}/allocate", json=allocation()) as response:
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (cls.http_status, cls.code.value)


async def test_a_wrong_method_is_405_from_its_class(running: Running) -> None:
    async with running.http.delete(f"{running.url}/healthz") as response:
        body = await response.json()
        assert response.status == errors.MethodNotAllowed.http_status == 405
    assert body["error"]["code"] == "InvalidRequest"
    assert "GET" in body["error"]["details"]["allowed"]
    assert body["message"].startswith("DELETE is not allowed on /healthz")


# ---------------------------------------------------------------- the OpenAPI document
async def served_document(running: Running) -> dict[str, Any]:
    async with running.http.get(f"{running.url}/openapi.json") as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
    return document


def app_of(running: Running) -> web.Application:
    assert running.server.http_app is not None
    return running.server.http_app


async def test_every_registered_route_is_in_the_document_with_its_methods(
    running: Running,
) -> None:
    registered: dict[str, set[str]] = {}
    for route in app_of(running).router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if route.method == "HEAD" or path.startswith("/socket.io"):
            continue  # HEAD is aiohttp's twin of each GET; Socket.IO has its own protocol
        registered.setdefault(openapi_path(path), set()).add(route.method.lower())
    document = await served_document(running)
    documented = {path: set(ops) for path, ops in document["paths"].items()}
    assert documented == registered
    assert {"/jobs", "/jobs/{job_id}", "/static/{path}", "/openapi.json"} <= set(documented)


async def test_the_document_is_valid_openapi_3_1(running: Running) -> None:
    document = await served_document(running)
    validate(document)  # openapi-spec-validator's structural check, offline
    operations = [op for ops in document["paths"].values() for op in ops.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)), "operation ids are unique (client generators need it)"
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            declared = set(re.findall(r"\{(\w+)\}", path))
            in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert in_path == declared, (method, path)
            assert any(code.startswith("2") for code in op["responses"]), (method, path)
            assert "400" in op["responses"], (method, path)  # the query string is checked


async def test_public_routes_say_security_empty_and_are_what_the_middleware_lets_through(
    running: Running,
) -> None:
    document = await served_document(running)
    public = {
        path
        for path, ops in document["paths"].items()
        for op in ops.values()
        if op.get("security") == []
    }
    assert public == {
        "/",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/auth/one-time",
        "/static/{path}",
        "/api/resources/v1/health",  # seed 000's liveness
    }
    assert public - {"/static/{path}"} == set(PUBLIC_PATHS)
    async with aiohttp.ClientSession() as anonymous:
        for path in sorted(public - {"/auth/one-time", "/static/{path}"}):
            async with anonymous.get(f"{running.url}{path}") as response:
                assert response.status != 401, path
        async with anonymous.get(f"{running.url}/jobs") as response:
            assert response.status == 401
    secured = document["paths"]["/jobs/submit"]["post"]
    assert "security" not in secured and document["security"] == [{"bearer": []}]
    assert secured["x-apportion-scope"] == "submit"
    assert {"201", "400", "401", "403", "404", "413"} <= set(secured["responses"])


async def test_statuses_of_declared_errors_are_in_the_document(running: Running) -> None:
    document = await served_document(running)
    for spec in declared_specs(app_of(running)):
        responses = document["paths"][openapi_path(spec.path)][spec.method.lower()]["responses"]
        for cls in spec.error_classes:
            assert str(cls.http_status) in responses, (spec.path, cls.__name__)
            assert cls.code.value in responses[str(cls.http_status)]["description"]
        for status in spec.success:
            assert str(status) in responses
    jobs = document["paths"]["/jobs"]["get"]
    assert [p["name"] for p in jobs["parameters"]] == [
        "status", "queue", "label", "parent_job_id", "limit", "offset"
    ]  # fmt: skip
    assert document["paths"]["/jobs/{job_id}"]["delete"]["responses"]["202"]
    assert "422" in document["paths"]["/clusters"]["post"]["responses"]  # InvalidDocument
    assert "409" in document["paths"]["/jobs/{job_id}/priority"]["post"]["responses"]


async def test_each_declared_body_model_is_the_one_the_route_validates_with(
    running: Running,
) -> None:
    # an unknown field and nothing else: the answer names the unknown field and every field
    # the declared model requires, so the model that validated is the declared one
    specs = [s for s in declared_specs(app_of(running)) if s.body is not None]
    assert {s.path for s in specs} >= {"/jobs/submit", "/keys", "/queues", "/auth/one-time"}
    # a sign-in link outstanding, so that /auth/one-time reads its body (it refuses unread
    # while none is)
    token = ONE_TIME_TOKENS.issue()
    try:
        await _check_body_models(running, specs)
    finally:
        ONE_TIME_TOKENS.consume(token)


async def _check_body_models(running: Running, specs: list[Any]) -> None:
    for spec in specs:
        assert spec.body is not None
        path = spec.path.replace("{job_id}", "no-such-job").replace("{uri}", "binpack:1.0-stable")
        path = path.replace("{name}", "default").replace("{queue_id}", "default")
        path = path.replace("{application}", "no-such-app")
        async with running.http.request(
            spec.method, f"{running.url}{path}", json={"zz_not_a_field": 1}
        ) as response:
            body = await response.json()
            assert response.status == 400, (spec.path, body)
        errors = {e["path"]: e["message"] for e in body["error"]["details"]["errors"]}
        assert "not a known field" in errors.pop("body.zz_not_a_field"), spec.path
        required = {f"body.{n}" for n, f in spec.body.model_fields.items() if f.is_required()}
        assert set(errors) == required, spec.path
        assert all(message == "is required" for message in errors.values())


async def test_answers_match_their_declared_response_types(running: Running, fleet: Any) -> None:
    submitted = await submit(running, {"command": exiting(0)})
    await wait_for(running, submitted, "completed")
    metrics_url = f"{running.url}/clusters/{fleet[0]['id']}/metrics"
    async with running.http.put(metrics_url, json={"nodes": []}) as response:
        assert response.status == 200
    checked = []
    for spec in declared_specs(app_of(running)):
        if spec.method != "GET" or spec.response is None:
            continue
        if spec.path.startswith("/api/resources/v1/") and "{" in spec.path:
            continue  # integer ids: tests/test_seed_000.py
        path = spec.path.replace("{job_id}", submitted).replace("{cluster_id}", fleet[0]["id"])
        path = path.replace("{uri}", "binpack:1.0-stable").replace("{queue_id}", "default")
        if "{" in path:
            continue  # an allocation id or a key id: no such thing here
        async with running.http.get(f"{running.url}{path}") as response:
            assert response.status in spec.success, (path, await response.text())
            TypeAdapter(spec.response).validate_python(await response.json())
        checked.append(spec.path)
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/statuses", "/events", "/keys"} <= set(
        checked
    )


# ---------------------------------------------------------------- unknown query parameters
@pytest.mark.parametrize(
    ("request_line", "accepted"),
    [
        (
            "GET /jobs?filter_exp=status%3Dqueued",
            "status, queue, label, parent_job_id, limit, offset",
        ),
        ("GET /events?sinse=3", "since, limit, type"),
        ("GET /dashboard/jobs?finshed=1", "finished"),
        ("GET /clusters?status=live", "none"),
        ("GET /healthz?verbose=1", "none"),
        ("POST /jobs/j-1/cancel?force=1", "none"),
        ("DELETE /policies/binpack:1.0-stable?force=1", "none"),
    ],
)
async def test_unknown_query_parameters_are_refused_naming_them(
    running: Running, request_line: str, accepted: str
) -> None:
    # before, GET /jobs?filter_exp=… answered every job: a script that filtered then
    # cancelled would have hit them all
    method, target = request_line.split(" ")
    name = target.split("?")[1].split("=")[0]
    async with running.http.request(method, f"{running.url}{target}") as response:
        body = await response.json()
        assert response.status == 400, body
    assert body["error"]["code"] == "InvalidRequest"
    assert body["error"]["details"]["path"] == f"query.{name}"
    assert f"unknown query parameter {name!r}" in body["message"]
    assert body["message"].endswith(f"this route accepts: {accepted}")


async def test_known_query_parameters_keep_working_and_bad_values_name_them(
    running: Running, fleet: Any
) -> None:
    submitted = await submit(running, {"command": exiting(0)})
    await wait_for(running, submitted, "completed")
    async with running.http.get(f"{running.url}/jobs?status=completed&limit=5") as response:
        assert response.status == 200
        assert [j["job_id"] for j in await response.json()] == [submitted]
    async with running.http.get(f"{running.url}/jobs?status=queued") as response:
        assert await response.json() == []
    bad = {
        "status=done": ("status", "one of created, queued, scheduled, running"),
        "limit=0": ("limit", "an integer from 1 to 10000"),
        "offset=-1": ("offset", "an integer from 0 to 1000000000"),
        "status=queued&status=running": ("status", "given 2 times"),
    }
    for query, (name, words) in bad.items():
        async with running.http.get(f"{running.url}/jobs?{query}") as response:
            body = await response.json()
            assert response.status == 400, query
        assert body["error"]["details"]["path"] == f"query.{name}"
        assert words in body["message"], body["message"]


async def test_changing_routes_answer_their_declared_types_and_statuses(
    running: Running, fleet: Any
) -> None:
    specs = {(s.method, s.path): s for s in declared_specs(app_of(running))}
    seen: set[tuple[str, str]] = set()

    async def call(method: str, template: str, path: str, **kwargs: Any) -> Any:
        spec = specs[(method, template)]
        async with running.http.request(method, f"{running.url}{path}", **kwargs) as response:
            body = await response.json()
            assert response.status in spec.success, (method, path, body)
        TypeAdapter(spec.response).validate_python(body)
        seen.add((method, template))
        return body

    cluster = fleet[0]["id"]
    job_id = (await call("POST", "/jobs/submit", "/jobs/submit", json={"config": {"command": exiting(0)}}))["job_id"]  # fmt: skip
    await wait_for(running, job_id, "completed")
    await call("POST", "/jobs/plan", "/jobs/plan", json={"config": {"command": exiting(0)}})
    held = await call("POST", "/jobs", "/jobs", json={"config": {"command": exiting(0)}})
    revised = {"config": {"command": exiting(0), "name": "revised"}, "priority": 2}
    await call("PATCH", "/jobs/{job_id}", f"/jobs/{held['job_id']}", json=revised)
    await call("POST", "/jobs/{job_id}/submit", f"/jobs/{held['job_id']}/submit")
    await call("POST", "/jobs/{job_id}/clean", f"/jobs/{job_id}/clean")
    await call("DELETE", "/jobs/{job_id}", f"/jobs/{job_id}")
    await call("POST", "/queues", "/queues", json={"name": "later", "clusters": ["not-yet"]})
    waits = {"config": {"command": exiting(0), "queue": "later"}}  # no cluster: it waits
    waiting = (await call("POST", "/jobs/submit", "/jobs/submit", json=waits))["job_id"]
    await call("POST", "/jobs/{job_id}/priority", f"/jobs/{waiting}/priority", json={"priority": 3})
    await call("POST", "/jobs/{job_id}/cancel", f"/jobs/{waiting}/cancel")
    array = {"config": {"command": exiting(0), "array": "0-1", "queue": "later"}}
    arrayed = (await call("POST", "/jobs/submit", "/jobs/submit", json=array))["array_job_id"]
    await call("POST", "/arrays/{array_job_id}/cancel", f"/arrays/{arrayed}/cancel")
    await call("POST", "/queues", "/queues", json={"name": "batch"})
    await call("PUT", "/queues", "/queues", json={"name": "batch", "description": "nightly"})
    app = {"name": "solver", "version": "1", "command": exiting(0)}
    await call("POST", "/applications", "/applications", json=app)
    await call("PUT", "/applications", "/applications", json={**app, "description": "v1"})
    runtime = "/queues/{queue_id}/applications/{application}/runtime-config"
    await call("PUT", runtime, "/queues/batch/applications/solver:1/runtime-config", json={})
    await call("DELETE", runtime, "/queues/batch/applications/solver:1/runtime-config")
    await call("DELETE", "/applications/{application}", "/applications/solver:1")
    await call("DELETE", "/queues/{queue_id}", "/queues/batch")
    await call("PUT", "/pool/limits", "/pool/limits", json={"max_concurrent_jobs": 4})
    await call("POST", "/accounts", "/accounts", json={"name": "ci-team"})
    await call("PATCH", "/accounts/{name}", "/accounts/ci-team", json={"shares": 3})
    key = await call(
        "POST", "/keys", "/keys", json={"name": "ci", "scope": "read", "account": "ci-team"}
    )
    await call("DELETE", "/keys/{key_id}", f"/keys/{key['data']['key_id']}")
    await call("PUT", "/clusters/{cluster_id}/metrics", f"/clusters/{cluster}/metrics", json={"nodes": []})  # fmt: skip
    await call("POST", "/cluster/query", "/cluster/query", json={"query": {}})
    await call("POST", "/clusters/query", "/clusters/query", json={"query": {}})
    await call("PUT", "/clusters/{cluster_id}", f"/clusters/{cluster}", json=fleet[0])
    held = await call("POST", "/allocate", "/allocate", json=allocation(adhoc=False, lease_seconds=60))  # fmt: skip
    await call("DELETE", "/allocations/{allocation_id}", f"/allocations/{held['allocation_id']}")
    await call(
        "POST",
        "/policies/{uri}/management",
        "/policies/similarity:1.0-stable/management",
        json={"action": "features"},
    )
    await call("DELETE", "/clusters/{cluster_id}", f"/clusters/{cluster}")
    await call("POST", "/clusters", "/clusters", json=fleet[0])
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", b"1,2\n", filename="in.csv")
    stored = await call("POST", "/files", "/files", data=form)
    await call("DELETE", "/files/{file_id}", f"/files/{stored['id']}")
    changing = {k for k, s in specs.items() if s.method != "GET" and s.response is not None}
    # uploading and deleting a policy: test_policy_upload.py; the one-time sign-in: not here;
    # seeds 003, 002 and 000: test_seed_003.py, test_seed_002.py and test_seed_000.py, the way
    # their clients drive them
    prefixes = ("/api/v2/", "/hpc/", "/api/resources/v1/")
    seeds = {(s.method, s.path) for s in specs.values() if s.path.startswith(prefixes)}
    assert changing - seen - seeds == {
        ("POST", "/policies"),
        ("DELETE", "/policies/{uri}"),
        ("POST", "/auth/one-time"),
    }
