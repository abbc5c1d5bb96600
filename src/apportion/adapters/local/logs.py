"""Reading a local job's output as one byte stream, for :meth:`LocalAdapter.logs`.

This module's one job is to turn the ``worker-<i>.out`` files in ``spec.output_dir`` into a
:class:`~apportion.adapters.base.LogChunk`. With one worker, the stream is its output as
is. With several, it is one append-only stream: ``==> worker N <==`` and worker N's output, in
worker order, where worker N's section is followed only once it has ended — so byte offsets stay
valid while the job runs (a later worker's output shows up when the earlier ones have ended).
A worker's output is its stdout and stderr together (one file, in the order written).
``offset`` and ``limit`` count bytes of that stream; a chunk
never ends inside a UTF-8 character unless the stream itself ends there.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path

from apportion.adapters.base import LogChunk
from apportion.adapters.local import executor as ex


def read_stream(
    output_dir: Path, workers: Sequence[tuple[int, bool]], offset: int, limit: int
) -> LogChunk:
    """Up to ``limit`` bytes of the stream from ``offset``, decoded as UTF-8.

    ``workers`` are ``(index, open)`` pairs in worker order; ``open`` is true for a worker that
    may still write (running, or not started yet) — the stream stops after the first such worker.
    """
    finished = not any(is_open for _, is_open in workers)
    segments: list[bytes | tuple[Path, int]] = []
    for index, is_open in workers:
        path = ex.stdout_path(output_dir, index)
        size = path.stat().st_size if path.exists() else 0
        if len(workers) > 1:
            segments.append(f"==> worker {index} <==\n".encode())
        segments.append((path, size))
        if is_open:
            break  # the frontier: later workers follow once this one has ended
        if len(workers) > 1 and size and _last_byte(path, size) != b"\n":
            segments.append(b"\n")
    data, total = _read_segments(segments, offset, limit + 3)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data[:limit], final=False)
    used = min(limit, len(data))
    for byte in data[limit:]:  # finish a character that the limit cut in two
        if not decoder.getstate()[0]:
            break
        text += decoder.decode(bytes([byte]), final=False)
        used += 1
    pending = len(decoder.getstate()[0])
    if pending and finished and offset + used >= total:
        text += decoder.decode(b"", final=True)  # a broken character ends the stream
    else:
        used -= pending  # the rest of that character has not been written yet
    end = offset + used
    return LogChunk(text=text, offset=end, complete=finished and end >= total, size=total)


def _last_byte(path: Path, size: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(size - 1)
        return fh.read(1)


def _read_segments(
    segments: list[bytes | tuple[Path, int]], offset: int, limit: int
) -> tuple[bytes, int]:
    """Bytes ``[offset, offset + limit)`` of the concatenated segments, and their total size."""
    out = bytearray()
    pos = 0
    for seg in segments:
        size = len(seg) if isinstance(seg, bytes) else seg[1]
        lo, hi = max(offset, pos), min(offset + limit, pos + size)
        if lo < hi:
            if isinstance(seg, bytes):
                out += seg[lo - pos : hi - pos]
            else:
                with seg[0].open("rb") as fh:
                    fh.seek(lo - pos)
                    out += fh.read(hi - lo)
        pos += size
    return bytes(out), pos
