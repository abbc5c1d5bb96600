"""JSON encoding and decoding for the whole package (orjson on the hot path)."""

from __future__ import annotations

from typing import Any

import orjson

from apportion.errors import InvalidJSON

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """Encode ``value`` as UTF-8 JSON bytes."""
    return orjson.dumps(value, option=_OPTIONS)


def dumps_str(value: Any) -> str:
    """Encode ``value`` as a JSON ``str`` (for text WebSocket frames)."""
    return orjson.dumps(value, option=_OPTIONS).decode()


def loads(data: str | bytes) -> Any:
    """Decode JSON; raise :class:`InvalidJSON` saying where the text is broken."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"the message is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "send one JSON object per message",
            details={"position": exc.pos},
        ) from None
