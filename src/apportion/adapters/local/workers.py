"""What a local job's state files and the process table say about each of its workers.

Used by :class:`~apportion.adapters.local.adapter.LocalAdapter` on every poll, cancel, logs and
usage call: :func:`read_workers` classifies each worker as ``missing`` (no state file), ``running``
(its executor is alive and verifiably ours, and has not recorded its end), ``ended`` (its
executor recorded the exit), ``orphaned`` (its executor died, its command lives on) or ``lost``
(its executor died without recording its end, and so did its command). :func:`stop_orphans`
stops the commands of orphaned workers — nobody could record their exit — and reports them lost.
:func:`owned_process` is the guard before any signal: a pid counts only if psutil shows the same
process we recorded (pid *and* create time), so a reused pid is never ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed

from apportion.adapters.base import JobSpec
from apportion.adapters.local import executor as ex

OWNER_TOLERANCE = 2.0  # seconds between a recorded start and psutil's create_time


@dataclass(frozen=True)
class WorkerView:
    """One worker as the files and the process table show it."""

    index: int
    state: dict[str, Any] | None
    kind: str  # "missing" | "running" | "ended" | "orphaned" | "lost"

    @property
    def code(self) -> int:
        """Exit code, 128 + N when killed by signal N, 1 when lost."""
        if self.state is None or self.kind == "lost":
            return 1
        if self.state.get("signal") is not None:
            return 128 + int(self.state["signal"])
        return int(self.state.get("return_code") or 0)

    @property
    def failure(self) -> str:
        """Why this worker counts as failed, for the job's ``reason``."""
        if self.kind == "lost":
            return f"worker {self.index} was lost: its executor died before recording its end"
        if self.kind == "missing":
            return f"worker {self.index} was never started (the server stopped during submit)"
        state = self.state or {}
        colon = ":" if state.get("stopped_by") else ""
        return f"worker {self.index}{colon} {state.get('reason') or 'failed'}"

    @property
    def genuine_failure(self) -> bool:
        """Failed by itself — not stopped by a cancel or because a sibling failed."""
        stopped_by = (self.state or {}).get("stopped_by")
        return (self.code != 0 or self.kind != "ended") and stopped_by not in ("cancel", "gang")


def owned_process(pid: object, started_at: object, pgid: object = None) -> Any:
    """The live ``psutil.Process`` for ``pid`` if it is still the process we started, else None.

    Guards every signal: a pid is ours only if it was created when we recorded its start (within
    :data:`OWNER_TOLERANCE`) and, for a command, still leads the process group we recorded.
    """
    if not isinstance(pid, int) or not isinstance(started_at, int | float):
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(started_at)) > OWNER_TOLERANCE:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if pgid is not None and os.getpgid(pid) != pgid:
            return None
    except (psutil.Error, OSError):
        return None
    return proc


def command_process(state: dict[str, Any]) -> Any:
    """The live command process of a worker state (pid, started_at, pgid), if it is ours."""
    return owned_process(state.get("pid"), state.get("started_at"), state.get("pgid"))


def read_workers(spec: JobSpec) -> list[WorkerView]:
    """Every worker of ``spec`` by index, as its state file and the process table show it."""
    out: list[WorkerView] = []
    for w in sorted(spec.workers, key=lambda w: w.index):
        state = ex.read_json(ex.state_path(spec.output_dir, w.index))
        if state is None:
            kind = "missing"
        elif state.get("ended_at") is not None:
            kind = "ended"
        elif owned_process(state.get("executor_pid"), state.get("executor_started_at")):
            kind = "running"
        else:  # re-read: the executor may have recorded the end just before it exited
            state = ex.read_json(ex.state_path(spec.output_dir, w.index)) or state
            if state.get("ended_at") is not None:
                kind = "ended"
            else:
                kind = "orphaned" if command_process(state) is not None else "lost"
        out.append(WorkerView(w.index, state, kind))
    return out


def stop_orphans(workers: list[WorkerView]) -> list[WorkerView]:
    """``workers`` with each orphaned one's process group SIGKILLed (verified ours) and the
    worker reported ``lost``: its executor died, so its exit could never be recorded."""
    out: list[WorkerView] = []
    for w in workers:
        if w.kind == "orphaned" and w.state is not None:
            if command_process(w.state) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(w.state["pgid"]), signal.SIGKILL)
            w = WorkerView(w.index, w.state, "lost")
        out.append(w)
    return out
