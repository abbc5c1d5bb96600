"""The Python client of Apportion: :class:`AsyncApportion` (asyncio) and :class:`Apportion`
(synchronous, thread-safe), their typed results and typed errors.

>>> from apportion.clients import Apportion
>>> with Apportion() as client:            # URL and key: args > APPORTION_* > credentials
...     print(client.allocate({"gpus": 2}).placement)
"""

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
    WaitTimeoutError,
)
from apportion.clients.events import EventStream
from apportion.clients.models import (
    AllocationResult,
    Cluster,
    Event,
    Job,
    JobReason,
    JobStatusEntry,
    Placement,
    Policy,
    Queue,
)
from apportion.clients.sync_client import Apportion

__all__ = [
    "AllocationResult",
    "Apportion",
    "ApportionClientError",
    "AsyncApportion",
    "ClientConfig",
    "Cluster",
    "ConflictError",
    "ConnectionLostError",
    "Event",
    "EventStream",
    "ForbiddenError",
    "Hold",
    "InvalidRequestError",
    "Job",
    "JobReason",
    "JobStatusEntry",
    "NoFeasiblePlacementError",
    "NotFoundError",
    "Placement",
    "Policy",
    "PolicyFailureError",
    "Queue",
    "RateLimitedError",
    "ServerError",
    "ServerUnreachableError",
    "UnauthorizedError",
    "WaitTimeoutError",
    "resolve_config",
]
