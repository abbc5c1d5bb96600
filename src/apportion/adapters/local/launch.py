"""Starting a local job's workers: the spec's checks, each worker's environment and launch file,
its supervisor process, and the wait until every supervisor reports its command started.

Called by :meth:`LocalAdapter.submit <apportion.adapters.local.adapter.LocalAdapter.submit>`
(the files and processes in a worker thread, the wait on the event loop). Every process gets an argv list, never a shell
string, and an environment built from :data:`JOB_PATH` and :data:`BASE_ENV_KEYS` only — never the server's whole
environment (it holds the admin key). Raises :class:`AdapterError`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from apportion.adapters.base import AdapterError, JobSpec, WorkerSpec
from apportion.adapters.distributed import torchrun_environment, visible_gpus
from apportion.adapters.local import supervisor as sv

BASE_ENV_KEYS = ("HOME", "LANG")  # never the server's whole environment (admin key)
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
"""A job's ``PATH`` unless its ``env`` sets one: the system's directories, never the server's
``PATH`` (whose first entries may be the server user's own, e.g. pyenv's shims under ``/root``,
which the job's user cannot run)."""
# The supervisor is one standard-library file, run as a script: isolated (-I: no user site,
# no PYTHON* variables, no cwd on sys.path) and without site-packages (-S), which it does not
# need and which would cost every job's start-up their .pth processing.
SUPERVISOR_SCRIPT = str(Path(sv.__file__).resolve())
SUPERVISOR_FLAGS = ("-I", "-S")
START_TIMEOUT = 15.0  # seconds for every supervisor to report its command started


def base_environment() -> dict[str, str]:
    """The minimal safe environment for jobs: :data:`JOB_PATH`, and the server's HOME and LANG
    only."""
    env = {key: os.environ[key] for key in BASE_ENV_KEYS if key in os.environ}
    env["PATH"] = JOB_PATH
    return env


def worker_environment(spec: JobSpec, worker: WorkerSpec) -> dict[str, str]:
    """Base + ``spec.env`` + the job user's ``HOME``, ``USER`` and ``LOGNAME`` (when it runs as
    one) + the GPU, torchrun (:mod:`apportion.adapters.distributed`; every worker runs on this
    host) and ``APPORTION_*`` variables (these win over ``spec.env``)."""
    env = base_environment()
    env.update(spec.env)
    if spec.run_as is not None:
        env.update(HOME=spec.run_as.home, USER=spec.run_as.user, LOGNAME=spec.run_as.user)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_gpus(spec, worker))
    env.update(torchrun_environment(spec, worker, "127.0.0.1"))
    env["APPORTION_JOB_ID"] = spec.job_id
    env["APPORTION_WORKER_INDEX"] = str(worker.index)
    env["APPORTION_NUM_WORKERS"] = str(len(spec.workers))
    return env


def validate_spec(spec: JobSpec) -> Path:
    """The job's resolved working directory; AdapterError for a spec that cannot be started."""
    if not spec.command or not all(isinstance(a, str) for a in spec.command):
        raise AdapterError("the job's command must be a non-empty list of strings (argv)")
    if any("\0" in a for a in spec.command):
        raise AdapterError("the job's command may not contain NUL characters")
    if not spec.workers:
        raise AdapterError("the job has no workers to start")
    indices = sorted(w.index for w in spec.workers)
    if indices != list(range(len(spec.workers))):
        raise AdapterError(f"worker indices must be 0..{len(spec.workers) - 1}, got {indices}")
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise AdapterError(
                f"environment variable {key!r} is not valid: use a non-empty name without"
                " '=' or NUL, and a value without NUL"
            )
    cwd = Path(spec.working_dir) if spec.working_dir else Path(spec.output_dir)
    if spec.working_dir and not cwd.is_dir():
        raise AdapterError(f"the working directory {spec.working_dir} does not exist")
    return cwd.resolve()


def start_supervisor(
    spec: JobSpec, worker: WorkerSpec, cwd: Path, attempt: str, grace_seconds: float
) -> subprocess.Popen[bytes]:
    """Write ``worker``'s launch file and start its supervisor in a new session."""
    job_dir = Path(spec.output_dir)
    launch = {
        "job_id": spec.job_id,
        "index": worker.index,
        "attempt": attempt,
        "job_dir": str(job_dir.resolve()),
        "command": list(spec.command),
        "cwd": str(cwd),
        "env": worker_environment(spec, worker),
        "stdout": str(sv.stdout_path(job_dir, worker.index).resolve()),  # and its stderr
        "walltime": spec.walltime_seconds,
        "grace": grace_seconds,
        "run_as": None
        if spec.run_as is None
        else {"uid": spec.run_as.uid, "gid": spec.run_as.gid, "groups": list(spec.run_as.groups)},
    }
    path = sv.launch_path(job_dir, worker.index)
    sv.write_json_atomic(path, launch)
    log_path = job_dir / f"worker-{worker.index}.supervisor.log"
    with os.fdopen(sv.open_private(log_path), "ab") as log:
        return subprocess.Popen(  # noqa: S603 - argv list, never a shell
            [sys.executable, *SUPERVISOR_FLAGS, SUPERVISOR_SCRIPT, str(path.resolve())],
            cwd=job_dir,
            env=base_environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


async def await_started(spec: JobSpec, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until every worker has a state file; else stop the job and raise AdapterError.

    Runs on the event loop (a few ``stat`` calls per check), not on a thread: a submit then holds
    no thread while its supervisors start, and polls of other jobs are not queued behind it.
    Checks back off from 5 ms to 50 ms, so many submits at once do not keep the loop busy."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = {w.index: proc for w, proc in zip(spec.workers, procs, strict=True)}
    states = {index: sv.state_path(spec.output_dir, index) for index in pending}
    delay = 0.005
    while pending:
        for index, proc in list(pending.items()):
            if states[index].exists():
                del pending[index]
            elif (proc.poll() is not None or time.monotonic() > deadline) and not (
                states[index].exists()  # wrote it, then exited
            ):
                abort_submit(spec)
                log = Path(spec.output_dir) / f"worker-{index}.supervisor.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise AdapterError(
                    f"the supervisor of worker {index} did not start its command: {tail}"
                )
        if pending:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)


def abort_submit(spec: JobSpec) -> None:
    """Stop what a failed submit already started (their supervisors see ``gang.json``)."""
    reason = "submit failed before every worker started"
    sv.write_json_atomic(Path(spec.output_dir) / sv.GANG_FILE, {"worker": -1, "reason": reason})
