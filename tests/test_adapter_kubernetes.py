"""The ``kubernetes`` adapter against recorded responses of a Kubernetes API server (issue 12,
item 4).

No Kubernetes API server can be installed on this machine, so these tests are not against a
real one: a stand-in HTTP server on 127.0.0.1 answers the adapter's requests with responses a
real API server gave (tests/data/kubernetes/) and writes down each request. What is real: the
adapter, the ``kubernetes_asyncio`` client and its HTTP requests, the kubeconfig it loads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from apportion.adapters.base import AdapterError, BackendState, JobSpec, RunAs, WorkerSpec
from apportion.adapters.kubernetes.adapter import KubernetesAdapter
from tests.recorded_cli import recorded

RUN = "5d0e4a9c1b7f4e2a8c3d6b9a0e1f2c3d"
NAME = f"apportion-{RUN}"
JOBS = "/apis/batch/v1/namespaces/ml/jobs"
PODS = "/api/v1/namespaces/ml/pods"


@dataclass
class RecordedApi:
    """The stand-in API server: what it answers now, and what it was asked."""

    url: str = ""
    job: str = "job-created.json"  # GET of the Job
    listing: str = "job-list-empty.json"
    pods: str = "pods-running.json"
    log: str = "hello from the pod\n"
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)

    def body(self, name: str) -> web.Response:
        document = json.loads(recorded(f"kubernetes/{name}"))
        return web.json_response(document, status=int(document.get("code", 200)))


@pytest.fixture
async def api() -> AsyncIterator[RecordedApi]:
    state = RecordedApi()

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        state.requests.append((request.method, request.path, dict(request.query), body))
        path, method = request.path, request.method
        if path == JOBS and method == "GET":
            return state.body(state.listing)
        if path == JOBS and method == "POST":
            response = state.body("job-created.json")
            response.set_status(201)
            return response
        if path == f"{JOBS}/{NAME}" and method in ("GET", "DELETE"):
            return state.body(state.job)
        if path == PODS:
            return state.body(state.pods)
        if path.startswith(f"{PODS}/") and path.endswith("/log"):
            return web.Response(text=state.log)
        return web.json_response({"code": 404, "kind": "Status"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def adapter_for(api: RecordedApi, tmp_path: Path) -> KubernetesAdapter:
    """The adapter, given a kubeconfig naming the stand-in server (as KUBECONFIG would)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {api.url}\n"
        "users:\n- name: apportion\n  user:\n    token: a-service-account-token\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: apportion\n"
    )
    return KubernetesAdapter(kubeconfig=str(kubeconfig))


def spec_of(
    out: Path, *, image: str | None = "registry.example/train:1.0", workers: int = 1
) -> JobSpec:
    return JobSpec(
        job_id=RUN,
        name="train",
        command=("python3", "train.py", "--lr", "$(rm -rf /)"),
        cluster_id="k8s",
        scheduler={"type": "kubernetes", "namespace": "ml"},
        workers=tuple(
            WorkerSpec(index=i, node_id="gpu-node-1", gpus=("0", "1"), vcpus=4, memory_mb=2048)
            for i in range(workers)
        ),
        output_dir=out,
        env={"WANDB_MODE": "offline"},
        working_dir="/workspace",
        walltime_seconds=60.5,
        run_as=RunAs(user="apportion-jobs", uid=999, gid=999, groups=(999,), home="/home/x"),
        image=image,
    )


async def test_a_job_becomes_a_kubernetes_job_and_is_followed(
    api: RecordedApi, tmp_path: Path
) -> None:
    adapter = adapter_for(api, tmp_path)
    spec = spec_of(tmp_path / "out")
    assert await adapter.submit(spec) == NAME
    (listed, created) = api.requests
    assert listed[:3] == ("GET", JOBS, {"labelSelector": f"apportion.io/run-id={RUN}"})
    manifest = created[3]
    assert created[:2] == ("POST", JOBS)
    assert manifest["metadata"] == {
        "name": NAME,
        "labels": {"apportion.io/run-id": RUN, "apportion.io/job-id": RUN},
    }
    assert manifest["spec"]["backoffLimit"] == 0  # fails rather than running twice
    assert manifest["spec"]["activeDeadlineSeconds"] == 61
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python3", "train.py", "--lr", "$(rm -rf /)"]  # an argv
    assert "args" not in container and container["image"] == "registry.example/train:1.0"
    assert container["resources"]["limits"] == {
        "cpu": "4",
        "memory": "2048Mi",
        "nvidia.com/gpu": "2",
    }
    assert {"name": "WANDB_MODE", "value": "offline"} in container["env"]
    assert container["workingDir"] == "/workspace"
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-1"}
    assert pod["securityContext"] == {"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": True}
    assert pod["restartPolicy"] == "Never"

    api.listing = "job-list-one.json"  # a restarted server finds it by its label
    assert await adapter_for(api, tmp_path).find(spec) == NAME
    assert await adapter.submit(spec) == NAME  # a retried dispatch creates nothing more
    assert [r[0] for r in api.requests].count("POST") == 1

    api.job = "job-pending.json"  # active, its container not running yet
    assert (await adapter.poll(spec, NAME)).state is BackendState.PENDING
    api.job = "job-running.json"
    running = await adapter.poll(spec, NAME)
    assert running.state is BackendState.RUNNING and running.started_at is not None
    chunk = await adapter.logs(spec, NAME, offset=5, limit=4)
    assert (chunk.text, chunk.offset, chunk.complete, chunk.size) == (" fro", 9, False, 19)

    api.job, api.pods = "job-failed.json", "pods-failed.json"
    failed = await adapter.poll(spec, NAME)
    assert (failed.state, failed.return_code, failed.exit_codes) == (BackendState.FAILED, 3, (3,))
    assert failed.reason == "exit code 3 (Error)"
    chunk = await adapter.logs(spec, NAME)
    assert (chunk.text, chunk.complete) == ("hello from the pod\n", True)

    api.job = "job-succeeded.json"
    done = await adapter.poll(spec, NAME)
    assert (done.state, done.return_code) == (BackendState.COMPLETED, 0)


async def test_cancel_deletes_the_job_and_a_gone_job_reads_cancelled(
    api: RecordedApi, tmp_path: Path
) -> None:
    adapter = adapter_for(api, tmp_path)
    spec = spec_of(tmp_path / "out")
    api.job = "job-running.json"
    await adapter.cancel(spec, NAME)
    method, path, query, _ = api.requests[-1]
    assert (method, path, query) == (
        "DELETE",
        f"{JOBS}/{NAME}",
        {"propagationPolicy": "Background"},
    )
    api.job = "status-404.json"
    status = await adapter.poll(spec, NAME)
    assert status.state is BackendState.CANCELLED
    await adapter.cancel(spec, NAME)  # gone already: not an error
    other = spec_of(tmp_path / "other")
    assert (await adapter.poll(other, NAME)).state is BackendState.UNKNOWN  # gone, not cancelled


async def test_what_the_adapter_refuses_and_an_api_that_cannot_answer(
    api: RecordedApi, tmp_path: Path
) -> None:
    adapter = adapter_for(api, tmp_path)
    with pytest.raises(AdapterError, match=r"needs a container image: set config\.image"):
        await adapter.submit(spec_of(tmp_path / "a", image=None))
    with pytest.raises(AdapterError, match="one worker per job"):
        await adapter.submit(spec_of(tmp_path / "b", workers=2))
    with pytest.raises(AdapterError, match="not a Kubernetes Job name"):
        await adapter.poll(spec_of(tmp_path / "c"), "../../secrets")
    api.job = "status-503.json"
    with pytest.raises(AdapterError) as unavailable:
        await adapter.poll(spec_of(tmp_path / "d"), NAME)
    assert unavailable.value.retryable and "503" in unavailable.value.message
    missing = KubernetesAdapter(kubeconfig=str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(AdapterError, match="no Kubernetes API server"):
        await missing.find(spec_of(tmp_path / "e"))
