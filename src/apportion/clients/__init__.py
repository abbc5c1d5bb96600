"""The Python client of Apportion: :class:`AsyncApportion` (asyncio) and :class:`Apportion`
(synchronous, thread-safe), their typed results and typed errors.

>>> from apportion.clients import Apportion
>>> with Apportion() as client:            # URL and key: args > APPORTION_* > credentials
...     print(client.allocate({"gpus": 2}).placement)
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from apportion.clients.async_client import AsyncApportion, Hold
    from apportion.clients.config import ClientConfig, resolve_config
    from apportion.clients.errors import (
        ApportionClientError,
        ConflictError,
        ConnectionLostError,
        ForbiddenError,
        InvalidRequestError,
        NoFeasiblePlacementError,
        NotFoundError,
        PolicyFailureError,
        RateLimitedError,
        ServerError,
        ServerUnreachableError,
        UnauthorizedError,
        UnavailableError,
        WaitTimeoutError,
    )
    from apportion.clients.events import EventStream
    from apportion.clients.models import (
        Account,
        AccountShare,
        AllocationResult,
        Application,
        Cluster,
        Event,
        FileLines,
        Job,
        JobArray,
        JobPlan,
        JobPriority,
        JobReason,
        JobStatusEntry,
        Placement,
        Policy,
        Queue,
        RuntimeConfig,
        StoredFile,
    )
    from apportion.clients.sync_client import Apportion

_HOME = {
    "AsyncApportion": "async_client",
    "Hold": "async_client",
    "ClientConfig": "config",
    "resolve_config": "config",
    "EventStream": "events",
    "Apportion": "sync_client",
    **dict.fromkeys(
        (
            "Account", "AccountShare", "AllocationResult", "Cluster", "Event", "Job", "JobPlan", "JobPriority",
            "JobReason",
            "JobStatusEntry", "Placement", "Policy", "Queue", "StoredFile", "FileLines",
            "Application", "RuntimeConfig", "JobArray",
        ),
        "models",
    ),
    **dict.fromkeys(
        (
            "ApportionClientError", "ConflictError", "ConnectionLostError", "ForbiddenError",
            "InvalidRequestError", "NoFeasiblePlacementError", "NotFoundError",
            "PolicyFailureError", "RateLimitedError", "ServerError", "ServerUnreachableError",
            "UnauthorizedError", "UnavailableError", "WaitTimeoutError",
        ),
        "errors",
    ),
}  # fmt: skip
"""Where each public name lives: importing ``apportion.clients`` (or one of its modules, as the
command line does) does not import aiohttp, websockets or python-socketio until a client is
used."""


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'apportion.clients' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"apportion.clients.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Account",
    "AccountShare",
    "AllocationResult",
    "Application",
    "Apportion",
    "ApportionClientError",
    "AsyncApportion",
    "ClientConfig",
    "Cluster",
    "ConflictError",
    "ConnectionLostError",
    "Event",
    "EventStream",
    "FileLines",
    "ForbiddenError",
    "Hold",
    "InvalidRequestError",
    "Job",
    "JobArray",
    "JobPlan",
    "JobPriority",
    "JobReason",
    "JobStatusEntry",
    "NoFeasiblePlacementError",
    "NotFoundError",
    "Placement",
    "Policy",
    "PolicyFailureError",
    "Queue",
    "RateLimitedError",
    "RuntimeConfig",
    "ServerError",
    "ServerUnreachableError",
    "StoredFile",
    "UnauthorizedError",
    "UnavailableError",
    "WaitTimeoutError",
    "resolve_config",
]
