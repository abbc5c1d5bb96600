"""The ``sge`` adapter: run a placed job as one Son of Grid Engine job (``qsub``/``qstat``/
``qdel``/``qacct``; seed 002's scheduler).

Every SGE command is an argv list run with ``asyncio.create_subprocess_exec`` (never a shell)
and a timeout. A job is submitted *as its user* (``qsub`` run with the job user's uid, gid and
groups; SGE then runs it as that user), in binary mode (``-b y``): SGE starts
``python3 -I <launcher> <launch.json>``, two paths, and the launcher (:data:`LAUNCHER`, the
standard library only) reads the argv, environment and working directory from the JSON file and
runs the argv verbatim — no shell ever parses a user's word. The launcher records SGE's job id
when it starts (``started.json``) and the command's exit code when it ends (``exit.json``), in
the job's output directory, so that :meth:`find` works after a server restart and :meth:`poll`
knows how a job ended without waiting for SGE's accounting. ``qsub -N apportion-<run id>``
names the job (the tag). One worker per job: a gang needs an SGE parallel environment, which
this adapter does not configure (refused, saying so).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from apportion.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
)
from apportion.adapters.commands import run_command
from apportion.adapters.logfile import read_chunk
from apportion.adapters.private_files import write_private

SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
TOOLS = ("qsub", "qstat", "qdel", "qacct", "qconf")
LOG_FILE = "output.log"
LAUNCH_FILE = "sge-launch.json"
LAUNCHER_FILE = "sge-launch.py"
STARTED_FILE = "started.json"
EXIT_FILE = "exit.json"
CANCEL_FILE = "cancel-requested"
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]+")  # what a path given to qsub may be
JOB_ID = re.compile(r"[0-9]+")

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


record("started.json", {"sge_job_id": os.environ.get("JOB_ID")})
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
"""The program SGE runs: the job's argv, verbatim, with its environment, in its directory."""


class SgeAdapter:
    """Runs one-worker jobs on a Son of Grid Engine cell (see the module's docstring)."""

    name = "sge"

    def __init__(self, *, command_timeout: float = 30.0, python: str = "python3") -> None:
        self._bin = {t: shutil.which(t) or t for t in TOOLS}
        self.command_timeout = command_timeout
        self.python = python

    async def _run(
        self, tool: str, *args: str, spec: JobSpec | None = None, check: bool = True
    ) -> tuple[int, str, str]:
        """Run one SGE tool (as ``spec``'s user for ``qsub``); ``(rc, stdout, stderr)``."""
        rc, out, err = await run_command(
            [self._bin[tool], *args],
            what=tool,
            within_seconds=self.command_timeout,
            run_as=spec.run_as if spec is not None else None,
            env={"PATH": os.defpath, "LC_ALL": "C", **SGE_ENV},
            cwd="/",
        )
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise AdapterError(f"{tool} failed (exit {rc}): {stderr.strip()[:500]}")
        return rc, stdout, stderr

    # ---------------------------------------------------------------- submit and find
    async def submit(self, spec: JobSpec) -> str:
        """Write the launch files, then ``qsub`` as the job's user; SGE's job id."""
        found = await self.find(spec)
        if found is not None:
            return found  # a retried dispatch: the job is there already
        if len(spec.workers) != 1:
            raise AdapterError(
                f"the sge adapter runs one worker per job; this one has {len(spec.workers)}"
                " (a gang needs an SGE parallel environment, not configured here)"
            )
        if not spec.command or not all(isinstance(a, str) and "\0" not in a for a in spec.command):
            raise AdapterError("the command must be a non-empty argv of strings without NUL")
        out = spec.output_dir
        if SAFE_PATH.fullmatch(str(out)) is None:
            raise AdapterError(f"the output directory {str(out)!r} cannot be given to qsub")
        await asyncio.to_thread(self._write_launch, spec)
        args = ["-terse", "-b", "y", "-N", _tag(spec), "-o", str(out / LOG_FILE), "-j", "y"]
        if spec.walltime_seconds is not None:
            args += ["-l", f"h_rt={int(spec.walltime_seconds) + 1}"]
        args += [self.python, "-I", str(out / LAUNCHER_FILE), str(out / LAUNCH_FILE)]
        _, stdout, _ = await self._run("qsub", *args, spec=spec)
        job_id = stdout.strip().split(".")[0]
        if JOB_ID.fullmatch(job_id) is None:
            raise AdapterError(f"qsub answered {stdout.strip()[:200]!r}, not a job id")
        return job_id

    def _write_launch(self, spec: JobSpec) -> None:
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
        launch = {"argv": list(spec.command), "env": env, "cwd": spec.working_dir or "/"}
        for name, text in ((LAUNCH_FILE, json.dumps(launch)), (LAUNCHER_FILE, LAUNCHER)):
            write_private(spec.output_dir / name, text, spec.run_as)

    async def find(self, spec: JobSpec) -> str | None:
        """SGE's id of the job tagged ``spec.run_id``: as its launcher recorded it, or as
        ``qstat`` lists it (not started yet); None when it never got there."""
        started = _read_json(spec.output_dir / STARTED_FILE)
        if started is not None and started.get("sge_job_id"):
            return str(started["sge_job_id"])
        tag = _tag(spec)
        for job in await self._qstat():
            if job["name"] == tag:
                return job["id"]
        return None

    async def _qstat(self) -> list[dict[str, str]]:
        """Every job SGE lists now: ``{id, name, state}``."""
        _, out, _ = await self._run("qstat", "-xml", "-u", "*")
        try:
            root = ET.fromstring(out)  # noqa: S314 - the local qstat's own output
        except ET.ParseError as exc:
            raise AdapterError(f"qstat -xml answered something else: {exc}") from None
        return [
            {
                "id": job.findtext("JB_job_number", ""),
                "name": job.findtext("JB_name", ""),
                "state": job.findtext("state", ""),
            }
            for job in root.iter("job_list")
        ]

    # ---------------------------------------------------------------- poll and cancel
    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state: SGE's while it lists the job, else how its launcher said it ended."""
        job_id = _check_id(scheduler_job_id)
        listed = next((j for j in await self._qstat() if j["id"] == job_id), None)
        out = spec.output_dir
        started_at = _mtime(out / STARTED_FILE)
        if listed is not None:
            state = listed["state"]
            if "E" in state:
                await self._run("qdel", "-f", job_id, check=False)
                return BackendStatus(
                    BackendState.FAILED,
                    reason=f"SGE put the job in error state ({state}): qstat -j {job_id} says why",
                    never_started=started_at is None,
                )
            if state.startswith(("r", "t", "R")) or "d" in state:
                return BackendStatus(BackendState.RUNNING, started_at=started_at)
            return BackendStatus(BackendState.PENDING)
        ended = _read_json(out / EXIT_FILE)
        ended_at = _mtime(out / EXIT_FILE)
        if (out / CANCEL_FILE).exists():
            return BackendStatus(
                BackendState.CANCELLED, reason="cancelled (qdel)", started_at=started_at,
                ended_at=ended_at or time.time(),
            )  # fmt: skip
        if ended is not None:
            code = int(ended.get("return_code", 1))
            return BackendStatus(
                BackendState.COMPLETED if code == 0 else BackendState.FAILED,
                return_code=code,
                reason=None if code == 0 else f"exit code {code}",
                started_at=started_at,
                ended_at=ended_at,
                exit_codes=(code,),  # one worker per job
            )
        if started_at is None:
            return BackendStatus(
                BackendState.FAILED,
                reason="SGE ended the job before it started",
                never_started=True,
            )
        return BackendStatus(
            BackendState.FAILED,
            reason="the job ended without an exit code (killed, or past its walltime)",
            started_at=started_at,
            ended_at=time.time(),
        )

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """Stop the job (``qdel``); idempotent."""
        job_id = _check_id(scheduler_job_id)
        if (spec.output_dir / EXIT_FILE).exists():
            return  # it ended: nothing to stop
        await asyncio.to_thread((spec.output_dir / CANCEL_FILE).touch)
        await self._run("qdel", job_id, check=False)

    # ---------------------------------------------------------------- output and usage
    async def logs(
        self,
        spec: JobSpec,
        scheduler_job_id: str,
        *,
        offset: int = 0,
        limit: int = 65536,
        worker: int | None = None,
    ) -> LogChunk:
        """The job's output file (stdout and stderr together) from byte ``offset``."""
        if worker not in (None, 0):
            raise AdapterError("an SGE job here has one worker, 0")
        finished = (await self.poll(spec, scheduler_job_id)).state.finished
        log = spec.output_dir / LOG_FILE
        return await asyncio.to_thread(read_chunk, log, offset, limit, finished=finished)

    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields; ``cpuSeconds`` from ``qacct`` once SGE has accounted the job."""
        job_id = _check_id(scheduler_job_id)
        result: dict[str, Any] = dict.fromkeys(
            ("cpuSeconds", "memoryCpuSeconds", "instantTotalMemory", "maxTotalMemory",
             "processIO", "processIOWaiting")
        )  # fmt: skip
        result["timeInstant"] = time.time()
        rc, out, _ = await self._run("qacct", "-j", job_id, check=False)
        if rc == 0:
            for line in out.splitlines():
                key, _, value = line.partition(" ")
                if key == "cpu":
                    result["cpuSeconds"] = _number(value.strip().rstrip("s"))
        return result

    async def partitions(self) -> list[dict[str, Any]]:
        """SGE's cluster queues, as ``GET /scheduler/partitions`` shows them."""
        _, out, _ = await self._run("qconf", "-sql")
        return [{"name": q, "adapter": "sge", "state": "up"} for q in out.split() if q]

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        return []


def _tag(spec: JobSpec) -> str:
    return f"apportion-{spec.run_id}"


def _check_id(scheduler_job_id: str) -> str:
    if JOB_ID.fullmatch(scheduler_job_id) is None:
        raise AdapterError(f"not an SGE job id: {scheduler_job_id!r}")
    return scheduler_job_id


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def create_adapter() -> SgeAdapter | None:
    """The ``sge`` adapter where SGE's commands are (the entry point of
    ``apportion.adapters``), else None."""
    return SgeAdapter() if shutil.which("qsub") is not None else None
