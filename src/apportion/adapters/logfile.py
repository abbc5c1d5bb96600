"""Reading a batch job's output file (one file, every worker's output) from a byte offset, for
the adapters whose scheduler writes it (``slurm``, ``sge``)."""

from __future__ import annotations

from pathlib import Path

from apportion.adapters.base import LogChunk


def read_chunk(path: Path, offset: int, limit: int, *, finished: bool) -> LogChunk:
    """Up to ``limit`` bytes of the file from ``offset``, decoded as UTF-8; a chunk never ends
    inside a character while more follows; ``finished``: the job has ended (nothing more will
    be written), so reaching the end completes it."""
    data, size = _read_from(path, offset, limit)
    if offset + len(data) < size:  # more follows: do not split a UTF-8 character
        data = _trim_partial_utf8(data)
    end = offset + len(data)
    return LogChunk(data.decode(errors="replace"), end, finished and end >= size, size)


def _read_from(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(min(offset, size))
            return f.read(max(0, limit)), size
    except FileNotFoundError:
        return b"", 0


def _trim_partial_utf8(b: bytes) -> bytes:
    """Drop an incomplete UTF-8 sequence at the end (it is read whole next time)."""
    for back in range(1, min(4, len(b)) + 1):
        byte = b[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
            need = 1 if byte < 0x80 else 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2
            return b if back >= need else b[:-back]
    return b
