"""The state of a local job from its workers: the gang, cancel and completion rules of ``poll``.

Called by :meth:`LocalAdapter.poll <apportion.adapters.local.adapter.LocalAdapter.poll>` with
the workers :func:`~apportion.adapters.local.workers.read_workers` found. Rules (see
:mod:`apportion.adapters.local.adapter` for the whole picture):

- ``pending`` while nothing started and a submit is in progress; ``unknown`` when nothing started;
- ``running`` while any worker runs — and when a sibling is missing or lost (and no submit is in
  progress) it writes ``gang.json`` so the executor stops the survivors;
- ``cancelled`` when ``cancel.json`` exists, no worker failed on its own before it, and a worker
  was stopped by it (or did not exit 0);
- ``completed`` when every worker exited 0; else ``failed`` with the code and reason of the first
  worker (by index) that failed by itself, or of the first failed one when none did.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from apportion.adapters.base import BackendState, BackendStatus, JobSpec
from apportion.adapters.local import executor as ex
from apportion.adapters.local.workers import WorkerView


def job_status(
    spec: JobSpec, workers: list[WorkerView], submitting: Collection[str]
) -> BackendStatus:
    """The job's :class:`BackendStatus`; ``submitting`` holds the job ids whose submit runs now."""
    job_dir = Path(spec.output_dir)
    if all(w.kind == "missing" for w in workers):
        if spec.run_id in submitting:
            return BackendStatus(BackendState.PENDING)
        return BackendStatus(BackendState.UNKNOWN, reason="the job never reached the backend")
    starts = [
        float(w.state["started_at"]) for w in workers if w.state and w.state.get("started_at")
    ]
    started_at = min(starts) if starts else None
    broken = [w for w in workers if w.kind in ("missing", "lost")]
    if any(w.kind == "running" for w in workers):
        if broken and spec.run_id not in submitting:
            reason = broken[0].failure
            if not (job_dir / ex.GANG_FILE).exists():
                ex.write_json_atomic(job_dir / ex.GANG_FILE, {"worker": -1, "reason": reason})
        return BackendStatus(BackendState.RUNNING, started_at=started_at)
    ends = [float(w.state["ended_at"]) for w in workers if w.state and w.state.get("ended_at")]
    ended_at = max(ends) if ends else None
    cancel = ex.read_json(job_dir / ex.CANCEL_FILE)
    if cancel is not None:
        requested = float(cancel.get("requested_at") or 0.0)
        failed_first = any(
            w.genuine_failure and float((w.state or {}).get("ended_at") or "inf") <= requested
            for w in workers
        )
        if not failed_first and any(
            w.code != 0 or (w.state or {}).get("stopped_by") == "cancel" for w in workers
        ):
            return BackendStatus(
                BackendState.CANCELLED,
                reason="cancelled",
                started_at=started_at,
                ended_at=ended_at,
                exit_codes=_exit_codes(workers),
            )
    failed = [w for w in workers if w.code != 0 or w.kind != "ended"]
    if not failed:
        return BackendStatus(
            BackendState.COMPLETED,
            return_code=0,
            started_at=started_at,
            ended_at=ended_at,
            exit_codes=_exit_codes(workers),
        )
    primary = next((w for w in failed if w.genuine_failure), failed[0])
    return BackendStatus(
        BackendState.FAILED,
        return_code=primary.code,
        reason=primary.failure,
        started_at=started_at,
        ended_at=ended_at,
        never_started=started_at is None,  # no worker's command ever ran
        exit_codes=_exit_codes(workers),
    )


def _exit_codes(workers: list[WorkerView]) -> tuple[int | None, ...]:
    """Each worker's exit code (128 + N when signal N killed it); None for a worker that never
    started or was lost."""
    return tuple(w.code if w.kind == "ended" else None for w in workers)
