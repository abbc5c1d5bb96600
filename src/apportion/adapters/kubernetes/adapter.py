"""The ``kubernetes`` adapter: run a placed job as one Kubernetes ``batch/v1`` Job (seed 000's
plugin example), through ``kubernetes_asyncio``.

A job becomes a Job of one pod (``backoffLimit: 0``: it fails rather than running twice) in the
cluster document's ``config.scheduler.namespace`` (default ``default``), named
``apportion-<run id>`` and labelled ``apportion.io/run-id`` (the tag :meth:`find` looks up
after a restart). Its container runs the job's image (``config.image``, or the application's
runtime configuration's ``image``, else the scheduler's ``image``) with the job's argv as its
``command`` — an argv, never a shell — its environment and working directory; it is pinned to
the node Apportion placed it on (``nodeSelector kubernetes.io/hostname``) and asks for the
worker's vCPUs, memory and GPUs (``nvidia.com/gpu``: the device plugin picks which of the
node's GPUs, Apportion counts them). It runs as the job's user (``runAsUser``/``runAsGroup``,
``runAsNonRoot``, no privilege escalation), with ``activeDeadlineSeconds`` as its walltime.
One worker per job.

The API server is the one of ``KUBECONFIG`` (else ``~/.kube/config``), or the cluster the
server runs in (``KUBERNETES_SERVICE_HOST``). Not run against a real Kubernetes here: no API
server can be installed on this machine. Its tests answer with recorded responses of a real
API server from a stand-in HTTP server on 127.0.0.1 (tests/test_adapter_kubernetes.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
    usage_document,
)
from apportion.adapters.batch import CANCEL_FILE

RUN_LABEL = "apportion.io/run-id"
JOB_LABEL = "apportion.io/job-id"
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS-1123 label
LOG_LIMIT = 64 * 1024 * 1024  # the most of a pod's log read at once


class KubernetesAdapter:
    """Runs one-worker jobs as Kubernetes Jobs (see the module's docstring)."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        configuration: client.Configuration | None = None,
        kubeconfig: str | None = None,
        in_cluster: bool = False,
        request_timeout: float = 30.0,
    ) -> None:
        """``configuration``: the API server to use; else one loaded from ``kubeconfig`` (or
        the pod's service account, ``in_cluster``) at first use."""
        self._configuration = configuration
        self._kubeconfig = kubeconfig
        self._in_cluster = in_cluster
        self._lock = asyncio.Lock()
        self.request_timeout = request_timeout

    async def _config(self) -> client.Configuration:
        async with self._lock:
            if self._configuration is None:
                loaded = client.Configuration()
                try:
                    if self._in_cluster:
                        config.load_incluster_config(  # type: ignore[no-untyped-call]
                            client_configuration=loaded
                        )
                    else:
                        await config.load_kube_config(
                            config_file=self._kubeconfig, client_configuration=loaded
                        )
                except (config.ConfigException, OSError) as exc:
                    raise AdapterError(f"no Kubernetes API server to talk to: {exc}") from None
                self._configuration = loaded
            return self._configuration

    async def _call(self, what: str, call: Any, *, missing_ok: bool = False) -> Any:
        """Run ``call(api_client)`` against the API server; :class:`AdapterError` naming
        ``what`` when it answers an error (retryable when it could not be reached or is
        overloaded) — but None for 404 with ``missing_ok``."""
        try:
            async with client.ApiClient(configuration=await self._config()) as api:
                return await asyncio.wait_for(call(api), self.request_timeout)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise AdapterError(
                f"{what}: the Kubernetes API answered {exc.status} {exc.reason}",
                retryable=exc.status in (429, 500, 502, 503, 504),
            ) from None
        except (OSError, TimeoutError) as exc:
            raise AdapterError(f"{what}: {exc}", retryable=True) from None

    # ---------------------------------------------------------------- submit and find
    async def submit(self, spec: JobSpec) -> str:
        """Create the Job (after looking for one of this run: a retried dispatch finds it)."""
        found = await self.find(spec)
        if found is not None:
            return found
        manifest: Any = job_manifest(spec)  # a dict: the client sends it as it is
        namespace = _namespace(spec)

        async def create(api: client.ApiClient) -> Any:
            return await client.BatchV1Api(api).create_namespaced_job(namespace, manifest)

        created = await self._call("creating the Job", create)
        return str(created.metadata.name)

    async def find(self, spec: JobSpec) -> str | None:
        """The name of the Job labelled with ``spec.run_id``, or None."""
        namespace = _namespace(spec)

        async def listed(api: client.ApiClient) -> Any:
            return await client.BatchV1Api(api).list_namespaced_job(
                namespace, label_selector=f"{RUN_LABEL}={spec.run_id}"
            )

        jobs = await self._call("listing Jobs", listed)
        names = sorted(str(job.metadata.name) for job in jobs.items or [])
        return names[0] if names else None

    # ---------------------------------------------------------------- poll and cancel
    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The Job's state from its status (and its pod's exit code once it ended)."""
        name, namespace = _check_name(scheduler_job_id), _namespace(spec)
        cancelled = await asyncio.to_thread((spec.output_dir / CANCEL_FILE).exists)

        async def read(api: client.ApiClient) -> Any:
            return await client.BatchV1Api(api).read_namespaced_job(name, namespace)

        job = await self._call("reading the Job", read, missing_ok=True)
        if job is None:
            if cancelled:
                return BackendStatus(BackendState.CANCELLED, reason="cancelled (Job deleted)")
            return BackendStatus(BackendState.UNKNOWN, reason=f"no Job {name} in {namespace}")
        status = job.status
        started = _seconds(status.start_time)
        if cancelled:
            return BackendStatus(
                BackendState.CANCELLED, reason="cancelled (Job deleted)", started_at=started
            )
        if status.succeeded:
            return BackendStatus(
                BackendState.COMPLETED,
                return_code=0,
                started_at=started,
                ended_at=_seconds(status.completion_time) or time.time(),
                exit_codes=(0,),
            )
        if status.failed:
            code, words = await self._ended_container(name, namespace)
            return BackendStatus(
                BackendState.FAILED,
                return_code=code,
                reason=words,
                started_at=started,
                ended_at=time.time(),
                never_started=started is None,
                exit_codes=(code,),
            )
        if status.active and status.ready != 0:  # ready: its container runs (None: an old server)
            return BackendStatus(BackendState.RUNNING, started_at=started)
        return BackendStatus(BackendState.PENDING)  # not yet scheduled, or pulling its image

    async def _ended_container(self, name: str, namespace: str) -> tuple[int | None, str]:
        """The exit code of the Job's container, and words for it (its reason)."""
        pod = await self._pod(name, namespace)
        statuses = [] if pod is None else (pod.status.container_statuses or [])
        terminated = next(
            (s.state.terminated for s in statuses if s.state and s.state.terminated), None
        )
        if terminated is None:
            reason = (pod.status.reason if pod is not None else None) or "the pod failed"
            return None, f"{reason} (no exit code)"
        code = int(terminated.exit_code)
        return code, f"exit code {code}" + (f" ({terminated.reason})" if terminated.reason else "")

    async def _pod(self, name: str, namespace: str) -> Any:
        async def listed(api: client.ApiClient) -> Any:
            return await client.CoreV1Api(api).list_namespaced_pod(
                namespace, label_selector=f"job-name={name}"
            )

        pods = (await self._call("listing the Job's pods", listed)).items or []
        return max(pods, key=lambda p: str(p.metadata.creation_timestamp), default=None)

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """Delete the Job and its pod (the pod gets its grace period); idempotent."""
        name, namespace = _check_name(scheduler_job_id), _namespace(spec)
        await asyncio.to_thread(_mark_cancelled, spec.output_dir)

        async def delete(api: client.ApiClient) -> Any:
            return await client.BatchV1Api(api).delete_namespaced_job(
                name, namespace, propagation_policy="Background"
            )

        await self._call("deleting the Job", delete, missing_ok=True)

    # ---------------------------------------------------------------- output and usage
    async def logs(
        self,
        spec: JobSpec,
        scheduler_job_id: str,
        *,
        offset: int = 0,
        limit: int = 65536,
        worker: int | None = None,
    ) -> LogChunk:
        """The pod's log (stdout and stderr together) from byte ``offset``; Kubernetes keeps
        it while the pod exists."""
        if worker not in (None, 0):
            raise AdapterError("a Kubernetes job here has one worker, 0")
        if offset < 0 or limit < 1:
            raise AdapterError(f"logs needs offset >= 0 and limit >= 1 (got {offset}, {limit})")
        name, namespace = _check_name(scheduler_job_id), _namespace(spec)
        finished = (await self.poll(spec, name)).state.finished
        pod = await self._pod(name, namespace)
        text = b""
        if pod is not None and pod.status.phase not in (None, "Pending"):

            async def read(api: client.ApiClient) -> Any:
                return await client.CoreV1Api(api).read_namespaced_pod_log(
                    pod.metadata.name, namespace, limit_bytes=LOG_LIMIT
                )

            text = str(await self._call("reading the pod's log", read)).encode()
        piece = text[offset : offset + limit]
        end = offset + len(piece)
        return LogChunk(
            piece.decode(errors="replace"), end, finished and end >= len(text), len(text)
        )

    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields: none known (that needs the metrics API), the time only."""
        return usage_document()

    async def partitions(self) -> list[dict[str, Any]]:
        return [{"name": "kubernetes", "adapter": "kubernetes", "state": "up"}]

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        return []


def job_manifest(spec: JobSpec) -> dict[str, Any]:
    """The ``batch/v1`` Job of ``spec`` (see the module's docstring)."""
    if len(spec.workers) != 1:
        raise AdapterError(
            f"the kubernetes adapter runs one worker per job; this one has {len(spec.workers)}"
        )
    image = spec.image or spec.scheduler.get("image")
    if not isinstance(image, str) or not image:
        raise AdapterError(
            "a Kubernetes job needs a container image: set config.image, the image of its"
            " application's runtime configuration, or the cluster's scheduler.image"
        )
    worker = spec.workers[0]
    amounts: dict[str, str] = {"cpu": str(worker.vcpus or 1)}
    if worker.memory_mb:
        amounts["memory"] = f"{worker.memory_mb}Mi"
    if worker.gpus:
        amounts["nvidia.com/gpu"] = str(len(worker.gpus))
    env = {
        **spec.env,
        "APPORTION_JOB_ID": spec.job_id,
        "APPORTION_WORKER_INDEX": "0",
        "APPORTION_NUM_WORKERS": "1",
    }
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": list(spec.command),
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": {"requests": amounts, "limits": amounts},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "nodeSelector": {"kubernetes.io/hostname": worker.node_id},
    }
    if spec.run_as is not None:
        pod["securityContext"] = {
            "runAsUser": spec.run_as.uid,
            "runAsGroup": spec.run_as.gid,
            "runAsNonRoot": True,
        }
    labels = {RUN_LABEL: spec.run_id, JOB_LABEL: spec.job_id}
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if spec.walltime_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, int(-(-spec.walltime_seconds // 1)))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(spec), "labels": labels},
        "spec": job_spec,
    }


def job_name(spec: JobSpec) -> str:
    """``apportion-<run id>``, as a DNS-1123 label (``.`` of a requeued run becomes ``-``)."""
    return f"apportion-{spec.run_id.lower().replace('.', '-')}"[:63].rstrip("-")


def _namespace(spec: JobSpec) -> str:
    namespace = str(spec.scheduler.get("namespace", "default"))
    if NAME.fullmatch(namespace) is None or len(namespace) > 63:
        raise AdapterError(f"scheduler.namespace {namespace!r} is no Kubernetes namespace name")
    return namespace


def _check_name(scheduler_job_id: str) -> str:
    if NAME.fullmatch(scheduler_job_id) is None or len(scheduler_job_id) > 63:
        raise AdapterError(f"not a Kubernetes Job name: {scheduler_job_id!r}")
    return scheduler_job_id


def _seconds(moment: Any) -> float | None:
    return None if moment is None else float(moment.timestamp())


def _mark_cancelled(output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CANCEL_FILE).touch()


def create_adapter() -> KubernetesAdapter | None:
    """The ``kubernetes`` adapter where an API server is configured — in a pod of the cluster
    (``KUBERNETES_SERVICE_HOST``), or a kubeconfig (``KUBECONFIG``, ``~/.kube/config``) — else
    None (the entry point of ``apportion.adapters``)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return KubernetesAdapter(in_cluster=True)
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return KubernetesAdapter(kubeconfig=kubeconfig) if Path(kubeconfig).is_file() else None
