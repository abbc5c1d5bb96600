"""What the allocation and job layers need to announce something: an async ``emit(type, payload)``.

The server passes :meth:`apportion.server.events.EventLog.append`, which stores the event
before it is sent; neither imports the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

EventSink = Callable[[str, dict[str, Any]], Awaitable[Any]]
