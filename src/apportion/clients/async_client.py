"""``AsyncApportion``: the asyncio client of an Apportion server.

Allocation goes over the allocation WebSocket (one connection, many requests in flight,
reconnect with backoff); everything else over REST; events over Socket.IO. Configuration is
resolved by :func:`~apportion.clients.config.resolve_config` (arguments > environment >
credentials profile). Use it as ``async with AsyncApportion() as client:`` or call
:meth:`AsyncApportion.close`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from typing import TYPE_CHECKING, Any

from apportion.clients.config import DEFAULT_POLICY, ClientConfig, resolve_config
from apportion.clients.errors import NotFoundError
from apportion.clients.files_api import FilesAPI
from apportion.clients.jobs_api import JobsAPI
from apportion.clients.models import AllocationResult, Event
from apportion.clients.registry_api import RegistryAPI
from apportion.clients.rest import DEFAULT_TIMEOUT, RestTransport

if TYPE_CHECKING:  # websockets and python-socketio are imported when first needed
    from apportion.clients.allocation_socket import AllocationSocket
    from apportion.clients.events import EventStream


class Hold:
    """A held allocation (``adhoc: false``); ``async with client.hold(...) as hold`` releases
    it on exit. ``result`` is the allocation answer."""

    def __init__(self, client: AsyncApportion, result: AllocationResult) -> None:
        self._client = client
        self.result = result
        self.released = False

    @property
    def allocation_id(self) -> str:
        """The hold's id."""
        assert self.result.allocation_id is not None
        return self.result.allocation_id

    @property
    def placements(self) -> list[Any]:
        """The held placements (one per request)."""
        return list(self.result.placements)

    async def renew(self, lease_seconds: float | None = None) -> float:
        """Extend the lease; returns the new expiry (UNIX seconds)."""
        return await self._client.renew(self.allocation_id, lease_seconds)

    async def release(self) -> None:
        """Release now (idempotent; a hold already gone is not an error)."""
        if not self.released:
            self.released = True
            with contextlib.suppress(NotFoundError):
                await self._client.release(self.allocation_id)


class _HoldContext:
    def __init__(self, client: AsyncApportion, message: dict[str, Any]) -> None:
        self._client = client
        self._message = message
        self._hold: Hold | None = None

    async def __aenter__(self) -> Hold:
        answer = await self._client._socket.request(self._message)
        self._hold = Hold(self._client, AllocationResult.from_answer(answer))
        return self._hold

    async def __aexit__(self, *exc: object) -> None:
        if self._hold is not None:
            await self._hold.release()


class AsyncApportion(JobsAPI, FilesAPI, RegistryAPI):
    """The asyncio client. Every method raises a subclass of
    :class:`~apportion.clients.errors.ApportionClientError` carrying the server's code."""

    def __init__(
        self,
        url: str | None = None,
        *,
        ws_url: str | None = None,
        api_key: str | None = None,
        profile: str | None = None,
        config: ClientConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.config = config or resolve_config(
            url=url, ws_url=ws_url, api_key=api_key, profile=profile
        )
        self._rest = RestTransport(self.config.url, self.config.api_key, timeout=timeout)
        self._allocation_socket: AllocationSocket | None = None

    @property
    def _socket(self) -> AllocationSocket:
        """The allocation WebSocket, made on first use (a REST-only command never imports
        websockets: the command line starts sooner)."""
        if self._allocation_socket is None:
            from apportion.clients.allocation_socket import AllocationSocket

            self._allocation_socket = AllocationSocket(self.config.ws_url, self.config.api_key)
        return self._allocation_socket

    async def __aenter__(self) -> AsyncApportion:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket and the HTTP session."""
        if self._allocation_socket is not None:
            await self._allocation_socket.close()
        await self._rest.close()

    # ------------------------------------------------------------------ allocation
    @staticmethod
    def _request(
        inputs: Mapping[str, Any],
        policy: str,
        *,
        adhoc: bool,
        clusters: Collection[str] | None,
        filter: Mapping[str, Any] | None,
        search: Mapping[str, Any] | None,
        parameters: Mapping[str, Any] | None,
        settings: Mapping[str, Any] | None,
        explain: bool,
        request_id: str | None,
        lease_seconds: float | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "adhoc": adhoc,
            "policy_rule_uri": policy,
            "clusters": list(clusters or []),
            "inputs": dict(inputs),
            "filter": dict(filter or {}),
            "search": dict(search or {}),
            "parameters": dict(parameters or {}),
            "settings": dict(settings or {}),
            "explain": explain,
        }
        if request_id is not None:
            message["request_id"] = request_id
        if lease_seconds is not None:
            message["lease_seconds"] = lease_seconds
        return message

    async def allocate(
        self,
        inputs: Mapping[str, Any],
        *,
        policy: str = DEFAULT_POLICY,
        clusters: Collection[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        search: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        explain: bool = False,
        request_id: str | None = None,
    ) -> AllocationResult:
        """Ask where ``inputs`` (one request, or ``{"requests": [...]}``) should go; nothing is
        held. Safe to call concurrently: requests share one connection.
        Raises :class:`NoFeasiblePlacementError` when nothing fits."""
        message = self._request(
            inputs,
            policy,
            adhoc=True,
            clusters=clusters,
            filter=filter,
            search=search,
            parameters=parameters,
            settings=settings,
            explain=explain,
            request_id=request_id,
        )
        return AllocationResult.from_answer(await self._socket.request(message))

    async def reserve(
        self,
        inputs: Mapping[str, Any],
        *,
        policy: str = DEFAULT_POLICY,
        lease_seconds: float | None = None,
        clusters: Collection[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        explain: bool = False,
        request_id: str | None = None,
    ) -> AllocationResult:
        """Allocate and hold (``adhoc: false``); the answer carries ``allocation_id``. Release
        it with :meth:`release` (or use :meth:`hold`)."""
        message = self._request(
            inputs,
            policy,
            adhoc=False,
            clusters=clusters,
            filter=filter,
            search=None,
            parameters=parameters,
            settings=settings,
            explain=explain,
            request_id=request_id,
            lease_seconds=lease_seconds,
        )
        return AllocationResult.from_answer(await self._socket.request(message))

    def hold(
        self,
        inputs: Mapping[str, Any],
        *,
        policy: str = DEFAULT_POLICY,
        lease_seconds: float | None = None,
        clusters: Collection[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Hold]:
        """``async with client.hold({"gpus": 2}) as hold:`` holds GPUs for the block and
        releases them on exit (also on an exception); ``await hold.renew(60)`` extends."""
        message = self._request(
            inputs,
            policy,
            adhoc=False,
            clusters=clusters,
            filter=filter,
            search=None,
            parameters=parameters,
            settings=settings,
            explain=False,
            request_id=None,
            lease_seconds=lease_seconds,
        )
        return _HoldContext(self, message)

    async def release(self, allocation_id: str) -> None:
        """Release a hold; :class:`NotFoundError` (``UnknownAllocation``) when it is gone."""
        await self._socket.request({"type": "release", "allocation_id": allocation_id})

    async def renew(self, allocation_id: str, lease_seconds: float | None = None) -> float:
        """Extend a hold's lease; returns its new expiry (UNIX seconds)."""
        message: dict[str, Any] = {"type": "renew", "allocation_id": allocation_id}
        if lease_seconds is not None:
            message["lease_seconds"] = lease_seconds
        answer = await self._socket.request(message)
        return float(answer["data"]["expires_at"])

    async def management(
        self, policy: str, action: str, data: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the policy's ``management(action, data)`` (admin) and return its answer."""
        message = {"type": "management", "policy_rule_uri": policy, "action": action}
        answer = await self._socket.request({**message, "data": dict(data or {})})
        return answer.get("data")

    async def allocations(self) -> list[dict[str, Any]]:
        """Active holds (an admin sees all; others their own)."""
        result: list[dict[str, Any]] = await self._rest.data("GET", "/allocations")
        return result

    # ------------------------------------------------------------------ status and events
    async def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no key needed)."""
        result: dict[str, Any] = await self._rest.call("GET", "/healthz")
        return result

    async def system_status(self) -> dict[str, Any]:
        """``GET /system/status``: version, uptime, Socket.IO clients, newest event seq."""
        result: dict[str, Any] = await self._rest.call("GET", "/system/status")
        return result

    async def event_history(
        self, since: int = 0, *, types: Collection[str] | None = None, page_size: int = 1000
    ) -> AsyncIterator[Event]:
        """Stored events after ``since`` (``GET /events``), a page at a time, then stop."""
        while True:
            params: dict[str, str | int] = {"since": since, "limit": page_size}
            if types:
                params["type"] = ",".join(sorted(types))
            page = await self._rest.call("GET", "/events", params=params)
            for raw in page["data"]:
                yield Event.model_validate(raw)
            if page["next_since"] <= since or not page["data"]:
                return
            since = page["next_since"]

    async def _latest_seq(self) -> int:
        return int((await self.system_status())["latest_event_seq"])

    def events(
        self,
        since: int | None = None,
        *,
        types: Collection[str] | None = None,
        backoff: float = 0.1,
    ) -> EventStream:
        """Live events over Socket.IO, as an async iterator. ``since=N`` first replays what
        came after ``seq`` N; ``None`` starts with the next new event. The stream reconnects
        by itself (first after ``backoff`` seconds, doubling up to 5 s) and resumes after the
        last ``seq`` it received; close it with ``aclose()``."""
        from apportion.clients.events import EventStream

        return EventStream(
            self.config.url,
            self.config.api_key,
            since=since,
            baseline=self._latest_seq,
            types=types,
            backoff=backoff,
        )
