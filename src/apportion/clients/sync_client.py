"""``Apportion``: the thread-safe synchronous façade over :class:`AsyncApportion`.

As in seed 001's job manager handler, blocking code never sees asyncio: the façade owns one
event loop in a daemon thread, and every method hands its coroutine to that loop with
``asyncio.run_coroutine_threadsafe`` and waits for the result. Any number of threads may
call one ``Apportion`` at once; their requests share the async client's connections (the
allocation WebSocket keeps them all in flight together). ``close()`` (or leaving
``with Apportion() as client:``) stops the loop and its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from apportion.clients.async_client import AsyncApportion, Hold
from apportion.clients.config import DEFAULT_POLICY, ClientConfig
from apportion.clients.errors import ApportionClientError
from apportion.clients.models import (
    Account,
    AccountShare,
    AllocationResult,
    Application,
    Cluster,
    Event,
    FileLines,
    Job,
    JobPlan,
    JobPriority,
    JobStatusEntry,
    Policy,
    Queue,
    RuntimeConfig,
    StoredFile,
)

T = TypeVar("T")


class Apportion:
    """The synchronous client: the same methods as :class:`AsyncApportion`, blocking.
    Iterators (``jobs``, ``logs``, ``events``) are plain generators."""

    def __init__(
        self,
        url: str | None = None,
        *,
        ws_url: str | None = None,
        api_key: str | None = None,
        profile: str | None = None,
        config: ClientConfig | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="apportion-client-loop", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def build() -> AsyncApportion:
            return AsyncApportion(
                url,
                ws_url=ws_url,
                api_key=api_key,
                profile=profile,
                config=config,
                timeout=timeout,
            )

        try:
            self._client = self._run(build())
        except BaseException:
            self.close()
            raise

    @property
    def config(self) -> ClientConfig:
        """The resolved URLs, key and where each came from."""
        return self._client.config

    # ------------------------------------------------------------------ plumbing
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ApportionClientError("this client is closed", code="Closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("do not call the sync client from inside its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        async def build() -> AsyncIterator[T]:
            return make()

        iterator = self._run(build())

        async def step() -> T:
            return await iterator.__anext__()

        try:
            while True:
                try:
                    yield self._run(step())
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None and not self._closed:
                with contextlib.suppress(Exception):
                    self._run(closer())

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            client = getattr(self, "_client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(client.close(), self._loop).result(10)
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> Apportion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ allocation
    def allocate(self, inputs: Mapping[str, Any], **options: Any) -> AllocationResult:
        """See :meth:`AsyncApportion.allocate` (``policy=``, ``clusters=``, ``explain=``…)."""
        return self._run(self._client.allocate(inputs, **options))

    def reserve(self, inputs: Mapping[str, Any], **options: Any) -> AllocationResult:
        """See :meth:`AsyncApportion.reserve`: allocate and hold."""
        return self._run(self._client.reserve(inputs, **options))

    @contextlib.contextmanager
    def hold(
        self,
        inputs: Mapping[str, Any],
        *,
        policy: str = DEFAULT_POLICY,
        lease_seconds: float | None = None,
        **options: Any,
    ) -> Iterator[Hold]:
        """``with client.hold({"gpus": 2}) as hold:`` holds for the block, releases on exit.
        ``hold.result`` is the answer; renew with ``client.renew(hold.allocation_id, 60)``."""
        result = self.reserve(inputs, policy=policy, lease_seconds=lease_seconds, **options)
        hold = Hold(self._client, result)
        try:
            yield hold
        finally:
            self._run(hold.release())

    def release(self, allocation_id: str) -> None:
        """Release a hold."""
        self._run(self._client.release(allocation_id))

    def renew(self, allocation_id: str, lease_seconds: float | None = None) -> float:
        """Extend a hold's lease; returns its new expiry (UNIX seconds)."""
        return self._run(self._client.renew(allocation_id, lease_seconds))

    def management(self, policy: str, action: str, data: Mapping[str, Any] | None = None) -> Any:
        """Call a policy's ``management(action, data)`` (admin)."""
        return self._run(self._client.management(policy, action, data))

    def allocations(self) -> list[dict[str, Any]]:
        """Active holds."""
        return self._run(self._client.allocations())

    # ------------------------------------------------------------------ registry and policies
    def clusters(self) -> list[Cluster]:
        """Every cluster document."""
        return self._run(self._client.clusters())

    def cluster(self, cluster_id: str) -> Cluster:
        """One cluster document."""
        return self._run(self._client.cluster(cluster_id))

    def register_cluster(self, document: Mapping[str, Any], *, replace: bool = False) -> Cluster:
        """Register (or with ``replace``, replace) a cluster (admin)."""
        return self._run(self._client.register_cluster(document, replace=replace))

    def delete_cluster(self, cluster_id: str) -> None:
        """Remove a cluster (admin)."""
        self._run(self._client.delete_cluster(cluster_id))

    def metrics(self, cluster_id: str) -> dict[str, Any]:
        """A cluster's metrics document."""
        return self._run(self._client.metrics(cluster_id))

    def push_metrics(self, cluster_id: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Push a metrics document."""
        return self._run(self._client.push_metrics(cluster_id, document))

    def export_snapshot(self) -> dict[str, Any]:
        """Clusters and metrics, for offline policy tests."""
        return self._run(self._client.export_snapshot())

    def policies(self) -> list[Policy]:
        """Every policy record."""
        return self._run(self._client.policies())

    def upload_policy(self, source: str | Path, record: Mapping[str, Any] | None = None) -> Policy:
        """Upload a policy folder or archive (admin)."""
        return self._run(self._client.upload_policy(source, record))

    # ------------------------------------------------------------------ queues and jobs
    def queues(self) -> list[Queue]:
        """Every queue."""
        return self._run(self._client.queues())

    def create_queue(self, body: Mapping[str, Any]) -> Queue:
        """Create a queue (admin)."""
        return self._run(self._client.create_queue(body))

    def applications(self) -> list[Application]:
        """Every registered application."""
        return self._run(self._client.applications())

    def create_application(self, body: Mapping[str, Any]) -> Application:
        """Register an application (admin; see :meth:`AsyncApportion.create_application`)."""
        return self._run(self._client.create_application(body))

    def set_runtime_config(
        self, queue: str, application: str, body: Mapping[str, Any]
    ) -> RuntimeConfig:
        """Set how an application runs in a queue (admin)."""
        return self._run(self._client.set_runtime_config(queue, application, body))

    def submit(self, command: list[str], **options: Any) -> str:
        """Submit a job; returns its id (see :meth:`AsyncApportion.submit`)."""
        return self._run(self._client.submit(command, **options))

    def create_job(self, command: list[str], **options: Any) -> Job:
        """Store a job without queueing it (see :meth:`AsyncApportion.create_job`)."""
        return self._run(self._client.create_job(command, **options))

    def submit_created(self, job_id: str) -> Job:
        """Queue a created job (see :meth:`AsyncApportion.submit_created`)."""
        return self._run(self._client.submit_created(job_id))

    def priorities(self) -> list[JobPriority]:
        """Waiting jobs with their priority factors (see :meth:`AsyncApportion.priorities`)."""
        return self._run(self._client.priorities())

    def plan(self, command: list[str], **options: Any) -> JobPlan:
        """What submitting would do now, without submitting (see :meth:`AsyncApportion.plan`)."""
        return self._run(self._client.plan(command, **options))

    def job(self, job_id: str) -> Job:
        """One job record."""
        return self._run(self._client.job(job_id))

    def jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        parent_job_id: str | None = None,
    ) -> Iterator[Job]:
        """Every job, paged behind a generator (filters as :meth:`AsyncApportion.jobs`)."""
        return self._iterate(
            lambda: self._client.jobs(
                status=status, queue=queue, labels=labels, parent_job_id=parent_job_id
            )
        )

    def statuses(self, job_id: str) -> list[JobStatusEntry]:
        """A job's status history."""
        return self._run(self._client.statuses(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job finished; :class:`WaitTimeoutError` after ``timeout``."""
        return self._run(self._client.wait(job_id, timeout))

    def cancel(self, job_id: str) -> None:
        """Cancel a job."""
        self._run(self._client.cancel(job_id))

    def clean(self, job_id: str) -> str:
        """Remove an ended job's own working directory (see :meth:`AsyncApportion.clean`)."""
        return self._run(self._client.clean(job_id))

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]:
        """The job's output in chunks; ``follow`` until it has finished."""
        return self._iterate(lambda: self._client.logs(job_id, follow=follow))

    def explain(self, job_id: str) -> dict[str, Any]:
        """Why the job waits, or where it was placed."""
        return self._run(self._client.explain(job_id))

    # ------------------------------------------------------------------ files
    def upload_file(
        self, path: str | Path, *, name: str | None = None, type: str = "input"
    ) -> StoredFile:
        """Store a local file (see :meth:`AsyncApportion.upload_file`)."""
        return self._run(self._client.upload_file(path, name=name, type=type))

    def files(self, *, type: str | None = None, job_id: str | None = None) -> list[StoredFile]:
        """The files this key may see (see :meth:`AsyncApportion.files`)."""
        return self._run(self._client.files(type=type, job_id=job_id))

    def file(self, file_id: str) -> StoredFile:
        """One file's record."""
        return self._run(self._client.file(file_id))

    def download_file(
        self, file_id: str, destination: str | Path, *, byte_range: str | None = None
    ) -> Path:
        """Write a file's content (see :meth:`AsyncApportion.download_file`)."""
        return self._run(self._client.download_file(file_id, destination, byte_range=byte_range))

    def file_lines(self, file_id: str, *, start: int = 0, count: int = 100) -> FileLines:
        """Lines of a text file (see :meth:`AsyncApportion.file_lines`)."""
        return self._run(self._client.file_lines(file_id, start=start, count=count))

    def delete_file(self, file_id: str) -> None:
        """Delete a file."""
        self._run(self._client.delete_file(file_id))

    # ------------------------------------------------------------------ keys and events
    def create_key(
        self,
        name: str,
        scope: str = "submit",
        *,
        account: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Create an API key (admin) of ``account`` naming ``user``."""
        return self._run(self._client.create_key(name, scope, account=account, user=user))

    def accounts(self) -> list[Account]:
        """Every account (an operator or admin key)."""
        return self._run(self._client.accounts())

    def create_account(
        self, name: str, *, os_user: str | None = None, description: str = "", shares: int = 1
    ) -> Account:
        """Create an account (admin) whose jobs run as ``os_user``, with ``shares``."""
        return self._run(
            self._client.create_account(
                name, os_user=os_user, description=description, shares=shares
            )
        )

    def set_shares(self, account: str, shares: int) -> Account:
        """Change an account's fair-share shares (admin)."""
        return self._run(self._client.set_shares(account, shares))

    def fair_share(self) -> list[AccountShare]:
        """Each account's fair share (see :meth:`AsyncApportion.fair_share`)."""
        return self._run(self._client.fair_share())

    def keys(self) -> list[dict[str, Any]]:
        """Every key, without secrets (admin)."""
        return self._run(self._client.keys())

    def revoke_key(
        self, key_id: str, *, allow_self: bool = False, allow_last_admin: bool = False
    ) -> None:
        """Revoke a key (admin); the flags as in the async client's ``revoke_key``."""
        self._run(
            self._client.revoke_key(
                key_id, allow_self=allow_self, allow_last_admin=allow_last_admin
            )
        )

    def events(
        self, since: int | None = None, *, types: Collection[str] | None = None
    ) -> Iterator[Event]:
        """Live events (resuming after reconnects) as a generator; close it to stop."""
        return self._iterate(lambda: self._client.events(since, types=types))
