"""What the batch adapters (SGE, PBS/Torque, LSF) share: :class:`BatchAdapter` (their tools
run as argv lists, a cancel marked before the scheduler is asked, the output file read by
offsets), what their scheduler runs for a one-worker job — a fixed launcher program and its
JSON launch file, written into the job's output directory for its user — the checks of a job
before it is submitted, and how a job the scheduler no longer lists ended.

The scheduler starts ``python3 -I <launcher> <launch file>`` — two paths, no words of the
user's — and the launcher (:data:`LAUNCHER`, the standard library only) reads the argv,
environment and working directory from the JSON file and runs the argv verbatim: no shell ever
parses a user's word. It records the scheduler's job id when it starts (``started.json``: the
value of the environment variable the scheduler sets, named in the launch file) and the
command's exit code when it ends (``exit.json``), so that an adapter finds a job after a server
restart and knows how it ended without waiting for the scheduler's accounting. Signals the
scheduler sends to stop the job (SIGTERM, SIGINT, SIGUSR1/2) are passed to the command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from apportion.adapters.base import AdapterError, BackendState, BackendStatus, JobSpec, LogChunk
from apportion.adapters.commands import run_command
from apportion.adapters.logfile import read_chunk
from apportion.adapters.private_files import write_private

STARTED_FILE = "started.json"
EXIT_FILE = "exit.json"
CANCEL_FILE = "cancel-requested"

LAUNCHER = r"""
import json, os, signal, subprocess, sys

with open(sys.argv[1]) as f:
    launch = json.load(f)
here = os.path.dirname(sys.argv[1])


def record(name, value):
    part = os.path.join(here, name + ".part")
    with open(part, "w") as f:
        json.dump(value, f)
    os.replace(part, os.path.join(here, name))


record("started.json", {"scheduler_job_id": os.environ.get(launch["id_variable"])})
try:
    os.chdir(launch["cwd"])
    child = subprocess.Popen(launch["argv"], env=launch["env"])
except OSError as exc:
    sys.stderr.write(f"apportion: cannot start {launch['argv'][0]!r}: {exc}\n")
    record("exit.json", {"return_code": 127})
    sys.exit(127)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, lambda number, frame: child.send_signal(number))
code = child.wait()
code = code if code >= 0 else 128 - code
record("exit.json", {"return_code": code})
sys.exit(code if code < 256 else 1)
"""
"""The program the scheduler runs: the job's argv, verbatim, with its environment, in its
directory."""


@dataclass(frozen=True)
class Launch:
    """Where a job's launcher and launch file are (the two paths given to the scheduler)."""

    launcher: Path
    launch_file: Path


class BatchAdapter(ABC):
    """The part of the SGE, PBS and LSF adapters that is the same for each: a subclass names
    its ``tools``, the one that stops a job (``cancel_tool``), the form of its job ids and how
    its scheduler is called in messages, and writes ``submit``, ``find``, ``poll``, ``usage``
    and ``partitions``."""

    name: ClassVar[str]
    scheduler: ClassVar[str]  # as messages name it: "SGE", "PBS", "LSF"
    tools: ClassVar[tuple[str, ...]]
    cancel_tool: ClassVar[str]
    job_id: ClassVar[re.Pattern[str]]

    def __init__(
        self,
        *,
        tools: Mapping[str, str] | None = None,
        command_timeout: float = 30.0,
        python: str = "python3",
    ) -> None:
        """``tools``: each command's path (default: found on ``PATH``); ``python``: the
        interpreter the scheduler starts the launcher with."""
        self._bin = {t: (tools or {}).get(t) or shutil.which(t) or t for t in self.tools}
        self.command_timeout = command_timeout
        self.python = python

    def tool_environment(self) -> dict[str, str]:
        """What the scheduler's tools need in their environment beyond ``PATH`` and
        ``LC_ALL`` (where the cell or the cluster's configuration is)."""
        return {}

    async def _run(
        self, tool: str, *args: str, spec: JobSpec | None = None, check: bool = True
    ) -> tuple[int, str, str]:
        """Run one of the scheduler's tools (as ``spec``'s user: the submit); ``(rc, stdout,
        stderr)``; :class:`AdapterError` for a non-zero exit with ``check``."""
        rc, out, err = await run_command(
            [self._bin[tool], *args],
            what=tool,
            within_seconds=self.command_timeout,
            run_as=spec.run_as if spec is not None else None,
            env={"PATH": os.defpath, "LC_ALL": "C", **self.tool_environment()},
            cwd="/",
        )
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise AdapterError(f"{tool} failed (exit {rc}): {stderr.strip()[:500]}")
        return rc, stdout, stderr

    def check_id(self, scheduler_job_id: str) -> str:
        """``scheduler_job_id`` if it is a job id of this scheduler (:class:`AdapterError`
        otherwise: nothing else is ever passed to its tools)."""
        if self.job_id.fullmatch(scheduler_job_id) is None:
            raise AdapterError(f"{scheduler_job_id!r} is no job id of {self.scheduler}")
        return scheduler_job_id

    @abstractmethod
    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus: ...

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """Mark the job cancelled, then stop it with :attr:`cancel_tool`; idempotent."""
        job_id = self.check_id(scheduler_job_id)
        if not await asyncio.to_thread(request_cancel, spec):
            return  # it ended: nothing to stop
        await self._run(self.cancel_tool, job_id, check=False)

    async def logs(
        self,
        spec: JobSpec,
        scheduler_job_id: str,
        *,
        offset: int = 0,
        limit: int = 65536,
        worker: int | None = None,
    ) -> LogChunk:
        """The job's output file (stdout and stderr together) from byte ``offset``; a job
        here has one worker, 0."""
        if worker not in (None, 0):
            raise AdapterError(f"{self.scheduler} jobs here have one worker, 0")
        finished = (await self.poll(spec, scheduler_job_id)).state.finished
        return await asyncio.to_thread(
            read_chunk, spec.output_dir / LOG_FILE, offset, limit, finished=finished
        )

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        return []


LOG_FILE = "output.log"
"""The job's output file (stdout and stderr together), where the scheduler writes it."""
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]+")
"""What a path given to a scheduler's command may be (no spaces, quotes, ``%`` or ``:``)."""


def check_one_worker_job(spec: JobSpec, adapter: str) -> None:
    """:class:`AdapterError` for a job ``adapter`` cannot submit: several workers, a command
    that is no argv of strings, or an output directory a scheduler's command cannot take."""
    if len(spec.workers) != 1:
        raise AdapterError(
            f"the {adapter} adapter runs one worker per job; this one has {len(spec.workers)}"
            " (a gang needs a worker started on each of its hosts, which it does not do)"
        )
    if not spec.command or not all(isinstance(a, str) and "\0" not in a for a in spec.command):
        raise AdapterError("the command must be a non-empty argv of strings without NUL")
    if SAFE_PATH.fullmatch(str(spec.output_dir)) is None:
        raise AdapterError(
            f"the output directory {str(spec.output_dir)!r} cannot be given to {adapter}'s"
            " commands (letters, digits, '._/-' only)"
        )


def ended_by_scheduler(spec: JobSpec, code: int, reason: str, scheduler: str) -> BackendStatus:
    """How a job ended by its scheduler's own word, when its launcher left no record (it was
    killed with it): completed for 0, else failed with ``reason``."""
    return BackendStatus(
        BackendState.COMPLETED if code == 0 else BackendState.FAILED,
        return_code=code,
        reason=None if code == 0 else f"{reason} ({scheduler}'s)",
        started_at=started_at(spec),
        ended_at=time.time(),
        exit_codes=(code,),
    )


def write_launch(spec: JobSpec, *, prefix: str, id_variable: str) -> Launch:
    """Write the launcher and the launch file of ``spec``'s one worker into its output
    directory, for its user (never through a link). ``prefix`` names the files
    (``<prefix>-launch.py``, ``<prefix>-launch.json``); ``id_variable`` is the environment
    variable in which the scheduler gives the job its id (``JOB_ID``, ``PBS_JOBID``,
    ``LSB_JOBID``)."""
    worker = spec.workers[0]
    env = dict(spec.env)
    env.setdefault("PATH", os.defpath)
    if spec.run_as is not None:
        env |= {"HOME": spec.run_as.home, "USER": spec.run_as.user, "LOGNAME": spec.run_as.user}
    env |= {
        "CUDA_VISIBLE_DEVICES": ",".join(worker.gpus),
        "APPORTION_JOB_ID": spec.job_id,
        "APPORTION_WORKER_INDEX": "0",
        "APPORTION_NUM_WORKERS": "1",
    }
    launch = {
        "argv": list(spec.command),
        "env": env,
        "cwd": spec.working_dir or "/",
        "id_variable": id_variable,
    }
    where = Launch(
        spec.output_dir / f"{prefix}-launch.py", spec.output_dir / f"{prefix}-launch.json"
    )
    write_private(where.launch_file, json.dumps(launch), spec.run_as)
    write_private(where.launcher, LAUNCHER, spec.run_as)
    return where


def recorded_job_id(spec: JobSpec) -> str | None:
    """The scheduler's job id the launcher recorded when the job started, if it did."""
    started = read_json(spec.output_dir / STARTED_FILE)
    if started is None:
        return None
    found = started.get("scheduler_job_id") or started.get("sge_job_id")  # older launchers
    return str(found) if found else None


def recorded_exit(spec: JobSpec) -> tuple[int, float | None] | None:
    """The exit code the launcher recorded when the command ended, and when; None before."""
    ended = read_json(spec.output_dir / EXIT_FILE)
    if ended is None:
        return None
    return int(ended.get("return_code", 1)), mtime(spec.output_dir / EXIT_FILE)


def started_at(spec: JobSpec) -> float | None:
    """When the launcher started (its record's time), None before."""
    return mtime(spec.output_dir / STARTED_FILE)


def request_cancel(spec: JobSpec) -> bool:
    """Mark the job as cancelled by Apportion before asking the scheduler to stop it (so that
    its end reads ``cancelled``, not ``failed``); False when it had already ended."""
    if (spec.output_dir / EXIT_FILE).exists():
        return False
    (spec.output_dir / CANCEL_FILE).touch()
    return True


def status_after_listing(spec: JobSpec, *, scheduler: str, cancelled_by: str) -> BackendStatus:
    """How a job the scheduler no longer lists ended, from its launcher's records: cancelled
    (Apportion asked, with ``cancelled_by``), completed or failed with the command's exit code,
    failed before it started, or failed without an exit code (killed with its launcher, or
    past its walltime)."""
    started = started_at(spec)
    ended = recorded_exit(spec)
    if (spec.output_dir / CANCEL_FILE).exists():
        return BackendStatus(
            BackendState.CANCELLED,
            reason=f"cancelled ({cancelled_by})",
            started_at=started,
            ended_at=(ended[1] if ended else None) or time.time(),
        )
    if ended is not None:
        code, ended_at = ended
        return BackendStatus(
            BackendState.COMPLETED if code == 0 else BackendState.FAILED,
            return_code=code,
            reason=None if code == 0 else f"exit code {code}",
            started_at=started,
            ended_at=ended_at,
            exit_codes=(code,),  # one worker per job
        )
    if started is None:
        return BackendStatus(
            BackendState.FAILED,
            reason=f"{scheduler} ended the job before it started",
            never_started=True,
        )
    return BackendStatus(
        BackendState.FAILED,
        reason="the job ended without an exit code (killed, or past its walltime)",
        started_at=started,
        ended_at=time.time(),
    )


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
