"""The per-worker supervisor of the ``local`` adapter, and the on-disk layout it shares with it.

Run as a script, ``python -I -S <this file> <launch.json>`` (argv only), by
:class:`~apportion.adapters.local.adapter.LocalAdapter`, in its own session, one per worker.
It outlives the server: it starts the worker's command in a new session (so the command leads its
own process group, ``pgid == pid``), waits for it and writes ``worker-<i>.state.json`` atomically —
once when the command has started and once when it has ended — so a restarted server finds the
job and its exit code. Standard library only, so it starts fast and cannot break on a dependency.

While the command runs the supervisor checks, every :data:`TICK` seconds, for

* the walltime (``walltime`` in the launch file): SIGTERM to the command's process group,
  SIGKILL after ``grace`` seconds; the state says ``stopped_by: "walltime"``;
* ``cancel.json`` in the job's directory (written by ``LocalAdapter.cancel``): the same stop,
  ``stopped_by: "cancel"``;
* ``gang.json`` (written by the supervisor of a sibling worker that failed, or by the adapter):
  gang semantics — a job whose worker failed is stopped as a whole, ``stopped_by: "gang"``;
* SIGTERM/SIGINT to the supervisor itself: the same stop, ``stopped_by: "signal"``.

When the command has exited (seen with ``waitid(WNOWAIT)``, so its pid still pins the process
group), whatever is left in its process group is SIGKILLed, then it is reaped with ``wait4`` and
its resource usage (CPU seconds, max RSS, block I/O) is recorded. A worker whose command exits
non-zero (or is stopped by its walltime) writes ``gang.json`` so its siblings stop too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TICK = 0.05  # seconds between checks of the walltime and the marker files
TAG_FILE = "job.json"
CANCEL_FILE = "cancel.json"
GANG_FILE = "gang.json"
USAGE_FILE = "usage.json"


def launch_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"worker-{index}.launch.json"


def state_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"worker-{index}.state.json"


def stdout_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"worker-{index}.out"


def open_private(path: Path) -> int:
    """``path`` opened for appending, created 0600: a job's files are the server's alone (the
    command writes its output through the descriptors it inherits, not by name)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` so readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class _Supervisor:
    def __init__(self, launch: dict[str, Any]) -> None:
        self.job_dir = Path(launch["job_dir"])
        self.index = int(launch["index"])
        self.walltime: float | None = launch.get("walltime")
        self.grace = float(launch["grace"])
        self.launch = launch
        self.state: dict[str, Any] = {
            "version": 1,
            "job_id": launch["job_id"],
            "worker": self.index,
            "supervisor_pid": os.getpid(),
            "supervisor_started_at": time.time(),
            "pid": None,
            "pgid": None,
            "started_at": None,
            "ended_at": None,
            "return_code": None,
            "signal": None,
            "reason": None,
            "stopped_by": None,
            "rusage": None,
        }
        self.stop_reason: tuple[str, str] | None = None  # (stopped_by, words)
        self.stop_sent_at: float | None = None
        self.killed = False
        self.signalled = False

    def _save(self) -> None:
        write_json_atomic(state_path(self.job_dir, self.index), self.state)

    def run(self) -> int:
        tag = read_json(self.job_dir / TAG_FILE)
        if tag is None or tag.get("attempt") != self.launch.get("attempt"):
            print("this launch was superseded by a later submit; not starting", file=sys.stderr)
            return 3
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            proc = self._start()
        except OSError as exc:
            now = time.time()
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self.state.update(ended_at=now, return_code=code, reason=f"could not start: {exc}")
            self._save()
            self._mark_gang_failed(self.state["reason"])
            return 0
        self.state.update(pid=proc.pid, pgid=proc.pid, started_at=time.time())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # after the start: the command keeps SIGHUP
        self._save()
        self._watch(proc.pid)
        self._finish(proc)
        return 0

    def _start(self) -> subprocess.Popen[bytes]:
        """Start the command. With ``run_as`` in the launch file (the server is root), the
        child sets its groups, gid and uid — in that order, before exec (``subprocess``'s own
        sequence) — and only then enters the working directory, as that user: a directory (or
        a symlink swapped in after submit) the user may not reach is refused, never entered by
        root on its behalf. The command's stdout and stderr both go to its one output file
        (in the order written, as Slurm's default output file), which stays the server's,
        open on the descriptors the command inherits. Raises OSError when the command cannot
        start."""
        run_as = self.launch.get("run_as")
        cwd = self.launch["cwd"]
        identity: dict[str, Any] = {"cwd": cwd}
        if run_as is not None:
            identity = {
                "user": int(run_as["uid"]),
                "group": int(run_as["gid"]),
                "extra_groups": [int(g) for g in run_as["groups"]],
                "preexec_fn": functools.partial(os.chdir, cwd),  # this process has one thread
            }
        with os.fdopen(open_private(Path(self.launch["stdout"])), "ab") as out:
            try:
                return subprocess.Popen(  # noqa: S603 - argv list; this process has one thread
                    self.launch["command"],
                    env=self.launch["env"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    **identity,
                )
            except subprocess.SubprocessError:  # the chdir in the child, as the job's user
                raise PermissionError(
                    f"the job's user cannot enter its working directory {cwd}"
                ) from None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = True

    def _watch(self, pid: int) -> None:
        pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(pid)
        started = time.monotonic()  # walltime and grace: immune to clock changes
        try:
            while True:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return
                self._check(pid, started)
                if pidfd is not None:
                    with contextlib.suppress(InterruptedError):
                        select.select([pidfd], [], [], TICK)
                else:
                    time.sleep(TICK)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _check(self, pgid: int, started: float) -> None:
        now = time.monotonic()
        if self.stop_reason is None:
            self.stop_reason = self._why_stop(now - started)
            if self.stop_reason is not None:
                self.stop_sent_at = now
                _killpg(pgid, signal.SIGTERM)
        elif not self.killed and now - (self.stop_sent_at or now) >= self.grace:
            self.killed = True
            _killpg(pgid, signal.SIGKILL)

    def _why_stop(self, elapsed: float) -> tuple[str, str] | None:
        if self.signalled:
            return ("signal", "its supervisor was asked to stop")
        if (self.job_dir / CANCEL_FILE).exists():
            return ("cancel", "cancelled")
        if self.walltime is not None and elapsed >= self.walltime:
            return ("walltime", f"walltime of {self.walltime:g} s exceeded")
        gang = read_json(self.job_dir / GANG_FILE)
        if gang is not None and gang.get("worker") != self.index:
            failed = gang.get("worker")
            if isinstance(failed, int) and failed >= 0:
                return ("gang", f"stopped because worker {failed} failed")
            return ("gang", f"stopped: {gang.get('reason') or 'the job failed'}")
        return None

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        _killpg(proc.pid, signal.SIGKILL)  # leftovers of the group; the zombie leader pins it
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        code = proc.returncode
        if self.stop_reason is None and (self.job_dir / CANCEL_FILE).exists():
            self.stop_reason = ("cancel", "cancelled")
        self.state.update(
            ended_at=time.time(),
            return_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            rusage={
                "cpu_seconds": rusage.ru_utime + rusage.ru_stime,
                "max_rss_mb": rusage.ru_maxrss / 1024.0,  # Linux reports KiB
                "io_bytes": (rusage.ru_inblock + rusage.ru_oublock) * 512,
            },
        )
        if self.stop_reason is not None:
            self.state["stopped_by"], self.state["reason"] = self.stop_reason
        elif code > 0:
            self.state["reason"] = f"exited with code {code}"
        elif code < 0:
            self.state["reason"] = f"killed by {signal.Signals(-code).name}"
        self._save()
        if code != 0 and self.state["stopped_by"] not in ("cancel", "gang"):
            self._mark_gang_failed(str(self.state["reason"]))

    def _mark_gang_failed(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            if not (self.job_dir / GANG_FILE).exists():
                write_json_atomic(
                    self.job_dir / GANG_FILE, {"worker": self.index, "reason": reason}
                )


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def main(argv: list[str]) -> int:
    """Entry point: ``argv == [launch_file]``.

    Returns 2 on a bad launch file, 3 when ``job.json`` names another submit attempt (this launch
    was superseded; nothing is started), else 0 — the command's own code is in the state file.
    """
    if len(argv) != 1:
        print(
            "usage: python -I -S supervisor.py LAUNCH_JSON",
            file=sys.stderr,
        )
        return 2
    launch = read_json(Path(argv[0]))
    if launch is None:
        print(f"cannot read the launch file {argv[0]}", file=sys.stderr)
        return 2
    return _Supervisor(launch).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
