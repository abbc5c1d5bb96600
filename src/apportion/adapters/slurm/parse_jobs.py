"""Slurm's view of a job (``squeue``/``sacct`` JSON, ``scontrol show job -o``) as a
:class:`SlurmJob`, and the engine's :class:`BackendStatus` of one.

Called by :mod:`apportion.adapters.slurm.adapter` on the text a
Slurm command printed; no I/O. Facts about Slurm 22.05 (openapi/v0.0.38) relied on:

- ``squeue --json`` ignores ``-j``/``--jobs``: it always lists every job, so callers filter here.
- a job's ``exit_code`` in ``squeue --json`` is the raw wait status (768 = exit 3, 15 = SIGTERM);
  ``sacct --json`` gives ``{"return_code", "signal": {"signal_id"}}``; ``scontrol`` ``ExitCode=3:0``.
- ``start_time``/``end_time`` of a pending or running job are *projections*; only a finished job's
  times are facts.

Malformed JSON raises :class:`AdapterError` (retryable: the next poll may read a good one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from apportion.adapters.base import BackendState, BackendStatus
from apportion.adapters.slurm.parse_text import load_json, parse_scontrol_record

_STATES: dict[str, BackendState] = {
    "PENDING": BackendState.PENDING,
    "REQUEUED": BackendState.PENDING,
    "REQUEUE_HOLD": BackendState.PENDING,
    "REQUEUE_FED": BackendState.PENDING,
    "CONFIGURING": BackendState.RUNNING,
    "RUNNING": BackendState.RUNNING,
    "COMPLETING": BackendState.RUNNING,
    "SUSPENDED": BackendState.RUNNING,
    "STOPPED": BackendState.RUNNING,
    "SIGNALING": BackendState.RUNNING,
    "STAGE_OUT": BackendState.RUNNING,
    "RESIZING": BackendState.RUNNING,
    "COMPLETED": BackendState.COMPLETED,
    "CANCELLED": BackendState.CANCELLED,
    "FAILED": BackendState.FAILED,
    "TIMEOUT": BackendState.FAILED,
    "NODE_FAIL": BackendState.FAILED,
    "BOOT_FAIL": BackendState.FAILED,
    "DEADLINE": BackendState.FAILED,
    "OUT_OF_MEMORY": BackendState.FAILED,
    "PREEMPTED": BackendState.FAILED,
    "SPECIAL_EXIT": BackendState.FAILED,
}
_WORDS = {
    "TIMEOUT": "walltime exceeded",
    "NODE_FAIL": "a node of the job failed",
    "BOOT_FAIL": "a node of the job failed to boot",
    "DEADLINE": "deadline reached",
    "OUT_OF_MEMORY": "out of memory",
    "PREEMPTED": "preempted",
}


@dataclass(frozen=True)
class SlurmJob:
    """One job as a Slurm command reported it (the fields the adapter needs)."""

    job_id: str
    state: str  # Slurm's word, upper case ("RUNNING", "FAILED", …)
    name: str = ""
    comment: str = ""
    nodes: str = ""
    reason: str = ""  # Slurm's state_reason ("Resources", "NonZeroExitCode", "None")
    exit_status: int | None = None  # the command's exit status when it exited
    signal: int | None = None  # the signal that ended it, if one did
    start_time: float | None = None
    end_time: float | None = None


def split_wait_status(raw: int) -> tuple[int | None, int | None]:
    """``(exit status, signal)`` of a raw wait status: 768 → (3, None); 15 → (None, 15)."""
    signal = raw & 0x7F
    if signal:
        return None, signal
    return (raw >> 8) & 0xFF, None


def _state_word(value: Any) -> str:
    if isinstance(value, list):  # newer Slurm: ["FAILED"] or ["RUNNING", "COMPLETING"]
        value = value[0] if value else ""
    return str(value or "").upper()


def _time(value: Any) -> float | None:
    if isinstance(value, dict):  # newer Slurm: {"set": true, "number": 123}
        value = value.get("number") if value.get("set", True) else None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return None


def parse_squeue(text: str) -> list[SlurmJob]:
    """Every job in ``squeue --json`` output (filter by id or tag yourself; see module notes)."""
    doc = load_json(text, "squeue --json")
    jobs: list[SlurmJob] = []
    for j in doc.get("jobs") or []:
        state = _state_word(j.get("job_state"))
        raw = j.get("exit_code")
        status, signal = split_wait_status(raw) if isinstance(raw, int) else (None, None)
        finished = _STATES.get(state, BackendState.UNKNOWN).finished
        jobs.append(
            SlurmJob(
                job_id=str(j.get("job_id")),
                state=state,
                name=str(j.get("name") or ""),
                comment=str(j.get("comment") or ""),
                nodes=str(j.get("nodes") or ""),
                reason=str(j.get("state_reason") or ""),
                exit_status=status if finished else None,
                signal=signal if finished else None,
                start_time=_time(j.get("start_time")) if state != "PENDING" else None,
                end_time=_time(j.get("end_time")) if finished else None,
            )
        )
    return jobs


def parse_sacct(text: str) -> list[SlurmJob]:
    """The jobs (not steps) of ``sacct --json`` output (needs slurmdbd; see docs/slurm.md)."""
    doc = load_json(text, "sacct --json")
    jobs: list[SlurmJob] = []
    for j in doc.get("jobs") or []:
        state_doc = j.get("state") or {}
        state = _state_word(state_doc.get("current") if isinstance(state_doc, dict) else state_doc)
        ec = j.get("exit_code") or {}
        status = ec.get("return_code") if isinstance(ec, dict) else None
        sig = ec.get("signal", {}).get("signal_id") if isinstance(ec, dict) else None
        times = j.get("time") or {}
        jobs.append(
            SlurmJob(
                job_id=str(j.get("job_id")),
                state=state,
                name=str(j.get("name") or ""),
                comment=str((j.get("comment") or {}).get("job") or ""),
                nodes=str(j.get("nodes") or ""),
                exit_status=status if isinstance(status, int) and not sig else None,
                signal=sig if isinstance(sig, int) and sig > 0 else None,
                start_time=_time(times.get("start")),
                end_time=_time(times.get("end")),
            )
        )
    return jobs


def sacct_cpu_seconds(text: str, job_id: str) -> float | None:
    """CPU time (user + system) of job ``job_id`` in ``sacct --json`` output, if it is there."""
    for j in load_json(text, "sacct --json").get("jobs") or []:
        total = (j.get("time") or {}).get("total")
        if str(j.get("job_id")) == job_id and isinstance(total, dict) and "seconds" in total:
            return float(total["seconds"]) + float(total.get("microseconds") or 0) / 1e6
    return None


def _scontrol_time(value: str) -> float | None:
    try:  # scontrol prints local time without a zone: 2026-11-21T23:34:04
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None  # "Unknown", "None", "N/A"


def parse_scontrol_job(text: str) -> SlurmJob | None:
    """The job of ``scontrol show job -o <id>`` output; ``None`` if it printed no record."""
    for line in text.splitlines():
        rec = parse_scontrol_record(line)
        if "JobId" not in rec:
            continue
        state = rec.get("JobState", "").upper()
        finished = _STATES.get(state, BackendState.UNKNOWN).finished
        code, _, sig = rec.get("ExitCode", "").partition(":")
        signal = int(sig) if sig.isdigit() and int(sig) > 0 else None
        status = int(code) if code.isdigit() and signal is None else None
        return SlurmJob(
            job_id=rec["JobId"],
            state=state,
            name=rec.get("JobName", ""),
            comment=rec.get("Comment", ""),
            nodes=rec.get("NodeList", ""),
            reason=rec.get("Reason", ""),
            exit_status=status if finished else None,
            signal=signal if finished else None,
            start_time=_scontrol_time(rec.get("StartTime", "")) if state != "PENDING" else None,
            end_time=_scontrol_time(rec.get("EndTime", "")) if finished else None,
        )
    return None


def status_of(job: SlurmJob) -> BackendStatus:
    """The engine's view of a Slurm job: state, return code (−signal if killed) and why."""
    state = _STATES.get(job.state, BackendState.UNKNOWN)
    rc: int | None = None
    if state.finished:
        rc = -job.signal if job.signal else job.exit_status
        if state is BackendState.COMPLETED and rc is None:
            rc = 0
    reason: str | None = None
    if state is BackendState.PENDING and job.reason not in ("", "None"):
        reason = f"waiting in Slurm: {job.reason}"
    elif state is BackendState.FAILED:
        words = _WORDS.get(job.state)
        if job.signal:
            reason = f"killed by signal {job.signal}"
        elif rc:
            reason = f"exit code {rc}"
        reason = ", ".join(w for w in (words, reason) if w) or f"Slurm state {job.state}"
    elif state is BackendState.CANCELLED:
        reason = "cancelled in Slurm"
    elif state is BackendState.UNKNOWN:
        reason = f"unknown Slurm state {job.state!r}"
    return BackendStatus(state, rc, reason, job.start_time, job.end_time)
