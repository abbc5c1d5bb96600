"""The one wire formatter of times: its two spellings, exactly, and that nothing else formats."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apportion.timefmt import iso_utc

SRC = Path(__file__).resolve().parent.parent / "src" / "apportion"


@pytest.mark.parametrize(
    ("ts", "zulu_ms", "wire"),
    [
        (0.0, False, "1970-01-01T00:00:00+00:00"),  # whole seconds: no fraction
        (1.5, False, "1970-01-01T00:00:01.500000+00:00"),  # events, jobs, keys, usage
        (1_700_000_000.25, False, "2023-11-14T22:13:20.250000+00:00"),
        (0.0, True, "1970-01-01T00:00:00.000Z"),  # metrics documents: ms and Z
        (1_700_000_000.25, True, "2023-11-14T22:13:20.250Z"),
    ],
)
def test_the_two_wire_spellings(ts: float, zulu_ms: bool, wire: str) -> None:
    assert iso_utc(ts, zulu_ms=zulu_ms) == wire


def test_a_time_not_reached_yet_stays_none() -> None:
    assert iso_utc(None) is None


def test_no_other_module_formats_times() -> None:
    # before, four helpers and three inline isoformat() calls each spelled times their own way
    formatting = re.compile(r"\.isoformat\(|strftime\(")
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "timefmt.py" and formatting.search(path.read_text())
    ]
    assert offenders == []
