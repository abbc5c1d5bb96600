"""Resource-usage samples of a local job, for :meth:`LocalAdapter.usage`.

This module's one job is to measure a job's workers with psutil and keep the running figures:
live workers are sampled over their whole process trees (CPU seconds, RSS, I/O bytes, iowait),
ended workers count with the final ``rusage`` their executor recorded, and memory × CPU time is
integrated between samples. The record is kept in ``usage.json`` so a finished job — or a
restarted server — still answers with the last sample.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed

from apportion.adapters.local import executor as ex
from apportion.timefmt import iso_utc

_MB = 1024.0 * 1024.0


def job_usage(
    usage_file: Path, record: dict[str, Any], workers: Sequence[tuple[str, dict[str, Any], Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job's usage sample (seed 002's fields) and the record to keep for the next call.

    ``record`` is the previous record (``{}`` for none); ``workers`` are ``(kind, state, proc)``
    in worker order, where ``kind`` is ``"ended"``, ``"running"``, … , ``state`` the worker's
    state file and ``proc`` its verified live command process (or None). A live sample is also
    written to ``usage_file`` (best effort).
    """
    cpu = io = 0.0
    rss = 0.0
    iowait: float | None = None
    max_final = 0.0
    live = False
    for kind, state, proc in workers:
        if kind == "ended" and isinstance(state.get("rusage"), dict):
            cpu += float(state["rusage"]["cpu_seconds"])
            io += float(state["rusage"]["io_bytes"])
            max_final = max(max_final, float(state["rusage"]["max_rss_mb"]))
        elif kind == "running" and proc is not None:
            live = True
            c, r, i, wait = _sample_tree(proc)
            cpu, rss, io = cpu + c, rss + r, io + i
            if wait is not None:
                iowait = (iowait or 0.0) + wait
    last = record.get("sample")
    if not live:  # finished (or not started): the last sample, with the final figures
        final = dict(last) if isinstance(last, dict) else _empty_sample()
        final["cpuSeconds"] = max(float(final.get("cpuSeconds") or 0.0), cpu)
        final["processIO"] = max(float(final.get("processIO") or 0.0), io)
        peak = max(float(final.get("maxTotalMemory") or 0.0), max_final)
        final["maxTotalMemory"] = peak if peak > 0 else None
        return dict(final), {**record, "sample": final}
    mem_mb = rss / _MB
    prev_cpu = float(record.get("cpu", 0.0))
    mem_cpu = float(record.get("mem_cpu", 0.0)) + (mem_mb / 1024.0) * max(0.0, cpu - prev_cpu)
    sample = {
        "cpuSeconds": cpu,
        "memoryCpuSeconds": mem_cpu,  # GB x CPU-seconds, integrated between samples
        "instantTotalMemory": mem_mb,
        "maxTotalMemory": max(float(record.get("max_mem", 0.0)), mem_mb, max_final),
        "processIO": io,
        "processIOWaiting": iowait,
        "timeInstant": iso_utc(time.time()),
    }
    record = {
        "cpu": cpu,
        "mem_cpu": mem_cpu,
        "max_mem": sample["maxTotalMemory"],
        "sample": sample,
    }
    with contextlib.suppress(OSError):  # best effort: the in-memory sample still answers
        ex.write_json_atomic(usage_file, record)
    return dict(sample), record


def _empty_sample() -> dict[str, Any]:
    """Seed 002's fields before any live sample was taken (missing values are None)."""
    return {
        "cpuSeconds": 0.0,
        "memoryCpuSeconds": None,
        "instantTotalMemory": None,
        "maxTotalMemory": None,
        "processIO": 0.0,
        "processIOWaiting": None,
        "timeInstant": iso_utc(time.time()),
    }


def _sample_tree(proc: Any) -> tuple[float, float, float, float | None]:
    """CPU seconds, RSS bytes, I/O bytes and iowait seconds of ``proc`` and its descendants."""
    cpu = rss = io = 0.0
    iowait: float | None = None
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        tree = [proc]
    for p in tree:
        try:
            with p.oneshot():
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                rss += p.memory_info().rss
                if hasattr(t, "iowait"):
                    iowait = (iowait or 0.0) + t.iowait
                try:
                    counters = p.io_counters()
                    io += counters.read_bytes + counters.write_bytes
                except (psutil.AccessDenied, AttributeError):
                    pass
        except psutil.Error:
            continue  # ended between listing and sampling
    return cpu, rss, io, iowait
