"""The one formatter of times: on the wire, UNIX seconds → ISO-8601 UTC (CONTRACTS: times are
ISO-8601 UTC strings in documents); for people, the command line's local time (:func:`local_time`).

Two spellings exist on the wire and stay as clients know them:

* ``2026-12-04T03:07:45.123456+00:00`` — Python's ``isoformat()`` (microseconds when not
  zero): events' ``ts``, job records and histories, API keys, ``resource_usage.timeInstant``,
  ``/resources`` and ``/system/status``, the dashboard's fleet snapshot;
* ``2026-12-04T03:07:45.123Z`` — milliseconds and ``Z`` (``zulu_ms=True``): the ``timestamp``
  of metrics documents (seed 004's global cluster metrics), as collectors send it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_utc(ts: float, *, zulu_ms: bool = False) -> str: ...
@overload
def iso_utc(ts: None, *, zulu_ms: bool = False) -> None: ...
@overload
def iso_utc(ts: float | None, *, zulu_ms: bool = False) -> str | None: ...
def iso_utc(ts: float | None, *, zulu_ms: bool = False) -> str | None:
    """``ts`` (UNIX seconds) as ISO-8601 UTC; ``None`` stays ``None`` (a time not reached yet).
    ``zulu_ms`` spells it as metrics documents do (milliseconds, ``Z``)."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, UTC)
    if zulu_ms:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat()


def local_time(ts: float) -> str:
    """``ts`` (UNIX seconds) as the command line shows a moment to a person: their local time,
    ``2026-12-06 14:03:09 CET`` (never on the wire)."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def local_moment(ts: float) -> str:
    """``ts`` as a column of the command line shows it, as ``squeue`` does: the person's local
    time, to the second, without spaces (``2026-12-06T14:03:09``)."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%dT%H:%M:%S")
