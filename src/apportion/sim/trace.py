"""Workload traces for the simulator: the Standard Workload Format of the Parallel Workloads
Archive (SWF) and a CSV of GPU jobs.

SWF (one job per line, 18 whitespace-separated fields, ``;`` comments): the fields used are the
job number (1), submit time (2), run time (4), allocated processors (5), requested processors
(8), requested time (9) and user id (12). A job of ``p`` processors becomes, on a fleet of
``g`` GPUs per node, ``ceil(p / g)`` workers of ``min(p, g)`` GPUs (each processor a GPU);
the user is its account, the requested time its walltime. Jobs that never ran (run time or
processors ≤ 0) are left out, as the archive's cleaned logs do.

CSV (a header line naming the columns): ``submit_time, account, workers, gpus_per_worker,
duration`` and, optionally, ``gpu_model``, ``walltime`` and ``priority``; times in seconds.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: when it arrives, whose it is, what it asks for, how long it runs."""

    job_id: str
    submit: float
    account: str
    workers: int
    gpus: int  # per worker
    duration: float  # how long it runs when started (cut at its walltime)
    walltime: float | None = None
    gpu_model: str | None = None
    priority: int = 0


class TraceError(ValueError):
    """A trace that cannot be read: the file, the line and what is wrong."""


def read_trace(path: Path, *, gpus_per_node: int) -> list[TraceJob]:
    """The jobs of a ``.swf`` or ``.csv`` trace, by submit time."""
    if path.suffix.lower() == ".swf":
        jobs = read_swf(path, gpus_per_node=gpus_per_node)
    elif path.suffix.lower() == ".csv":
        jobs = read_csv(path)
    else:
        raise TraceError(f"{path}: a trace is a .swf or a .csv file")
    return sorted(jobs, key=lambda j: (j.submit, j.job_id))


def read_swf(path: Path, *, gpus_per_node: int) -> list[TraceJob]:
    """The jobs of an SWF trace (see the module's docstring)."""
    jobs = []
    for number, line in enumerate(_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith(";"):
            continue
        fields = text.split()
        if len(fields) < 12:
            raise TraceError(f"{path}:{number}: an SWF line has 18 fields, this one {len(fields)}")
        try:
            job_no, submit, run = fields[0], float(fields[1]), float(fields[3])
            allocated, requested = int(fields[4]), int(fields[7])
            asked_time, user = float(fields[8]), fields[11]
        except ValueError as exc:
            raise TraceError(f"{path}:{number}: {exc}") from None
        processors = requested if requested > 0 else allocated
        if run <= 0 or processors <= 0:
            continue
        workers = math.ceil(processors / gpus_per_node)
        jobs.append(
            TraceJob(
                job_id=job_no,
                submit=submit,
                account=f"user{user}",
                workers=workers,
                gpus=min(processors, gpus_per_node),
                duration=run,
                walltime=asked_time if asked_time > 0 else None,
            )
        )
    return jobs


CSV_REQUIRED = ("submit_time", "account", "workers", "gpus_per_worker", "duration")


def read_csv(path: Path) -> list[TraceJob]:
    """The jobs of a CSV trace (see the module's docstring)."""
    reader = csv.DictReader(_lines(path))
    missing = [c for c in CSV_REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"{path}: the header lacks {', '.join(missing)}")
    jobs = []
    for number, row in enumerate(reader, start=2):
        try:
            jobs.append(
                TraceJob(
                    job_id=str(number - 1),
                    submit=float(row["submit_time"]),
                    account=row["account"] or "default",
                    workers=int(row["workers"]),
                    gpus=int(row["gpus_per_worker"]),
                    duration=float(row["duration"]),
                    walltime=float(row["walltime"]) if row.get("walltime") else None,
                    gpu_model=row.get("gpu_model") or None,
                    priority=int(row["priority"]) if row.get("priority") else 0,
                )
            )
        except ValueError as exc:
            raise TraceError(f"{path}:{number}: {exc}") from None
        if jobs[-1].workers < 1 or jobs[-1].gpus < 0 or jobs[-1].duration < 0:
            raise TraceError(f"{path}:{number}: workers ≥ 1, gpus_per_worker and duration ≥ 0")
    return jobs


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
