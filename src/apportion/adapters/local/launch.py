"""Starting a local job's workers: the spec's checks, each worker's environment, and the
executor's ``start`` request that carries them.

Called by :meth:`LocalAdapter.submit <apportion.adapters.local.adapter.LocalAdapter.submit>`.
Every command is an argv list, never a shell string, with an environment built from
:data:`JOB_PATH` and :data:`BASE_ENV_KEYS` only — never the server's whole environment (it holds
the admin key). Raises :class:`AdapterError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from apportion.adapters.base import AdapterError, JobSpec, WorkerSpec
from apportion.adapters.distributed import torchrun_environment, visible_gpus
from apportion.adapters.local import executor as ex

BASE_ENV_KEYS = ("HOME", "LANG")  # never the server's whole environment (admin key)
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
"""A job's ``PATH`` unless its ``env`` sets one: the system's directories, never the server's
``PATH`` (whose first entries may be the server user's own, e.g. pyenv's shims under ``/root``,
which the job's user cannot run)."""


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


def start_request(spec: JobSpec, cwd: Path, attempt: str, grace_seconds: float) -> dict[str, Any]:
    """The executor's ``start`` request for every worker of ``spec`` (submit ``attempt``)."""
    job_dir = Path(spec.output_dir).resolve()
    run_as = spec.run_as
    return {
        "op": "start",
        "job_dir": str(job_dir),
        "attempt": attempt,
        "workers": [
            {
                "job_id": spec.job_id,
                "index": worker.index,
                "command": list(spec.command),
                "cwd": str(cwd),
                "env": worker_environment(spec, worker),
                "stdout": str(ex.stdout_path(job_dir, worker.index)),  # and its stderr
                "walltime": spec.walltime_seconds,
                "grace": grace_seconds,
                "run_as": None
                if run_as is None
                else {"uid": run_as.uid, "gid": run_as.gid, "groups": list(run_as.groups)},
            }
            for worker in spec.workers
        ],
    }
