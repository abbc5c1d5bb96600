"""What the allocation and job layers need to announce something: an async
``emit(type, payload, account=…)``.

The server passes :meth:`apportion.server.events.EventLog.append`, which stores the event
before it is sent, and delivers it only to the keys that may see ``account``'s work (None: a
fleet-wide event, for every key); neither layer imports the server.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol


class EventSink(Protocol):
    """``await emit(type, payload, account=None)``: store and announce one event about
    ``account``'s work (None: about the fleet). The event log's hands the event over when
    called, so it is committed with the changes handed over just before it."""

    def __call__(
        self, type: str, payload: dict[str, Any], *, account: str | None = None
    ) -> Awaitable[Any]: ...
