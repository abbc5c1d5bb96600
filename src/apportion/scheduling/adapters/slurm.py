"""The ``slurm`` adapter: run a placed job as one Slurm batch job (``sbatch``/``squeue``/``scancel``).

The job engine calls it like any :class:`~apportion.scheduling.adapters.base.Adapter`. Every Slurm
command is an argv list run with ``asyncio.create_subprocess_exec`` (never a shell) and a timeout.

How the user's argv reaches the job verbatim: :meth:`SlurmAdapter.submit` writes
``slurm-launch.json`` (argv, env, worker layout) into ``spec.output_dir`` and a batch script that
runs a fixed launcher, ``python3 -c <LAUNCHER> <that json file>`` (under ``srun`` for several
workers). The launcher reads the argv from JSON and ``os.execvpe``\\ s it: no shell ever parses a
user's word, so spaces, quotes, ``$(...)`` and ``;`` arrive unchanged. The only text put into the
script is the launcher constant and file paths, each quoted with :func:`shlex.quote`.

Names that reach Slurm (job id tag, job name, partition, account, qos, node names) must match
:data:`NAME_PATTERN` (no newline, no spaces); anything else is refused with :class:`AdapterError`
before any command runs. The tag ``apportion:<job_id>`` is the ``--comment`` and starts the
``--job-name`` (``apportion:<job_id>:<name>``), so :meth:`find` works after a restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.scheduling.adapters import slurm_parse as sp
from apportion.scheduling.adapters.base import (
    AdapterError,
    BackendState,
    BackendStatus,
    JobSpec,
    LogChunk,
)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a name reaching Slurm must fully match: no newline, space, quote, comma or colon."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOOLS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct")
LOG_FILE = "output.log"
SCRIPT_FILE = "slurm-job.sh"
LAUNCH_FILE = "slurm-launch.json"
_USAGE_KEYS = (
    "cpuSeconds",
    "memoryCpuSeconds",
    "instantTotalMemory",
    "maxTotalMemory",
    "processIO",
    "processIOWaiting",
)


class SlurmAdapter:
    """Runs jobs on a Slurm cluster through its command-line tools (see the module docstring).

    ``binaries`` maps tool names (``sbatch`` … ``sacct``) to paths (default: found on PATH);
    ``grace_seconds`` is how long :meth:`cancel` waits for Slurm to report the job finished (the
    SIGTERM → SIGKILL delay itself is the cluster's ``KillWait``); ``command_timeout`` bounds each
    Slurm command; ``python`` is the interpreter the batch script runs the launcher with.
    """

    name = "slurm"

    def __init__(
        self,
        *,
        binaries: dict[str, str] | None = None,
        grace_seconds: float = 10.0,
        command_timeout: float = 30.0,
        python: str = "python3",
    ) -> None:
        unknown = set(binaries or {}) - set(TOOLS)
        if unknown:
            raise ValueError(f"unknown Slurm tools {sorted(unknown)}; known: {', '.join(TOOLS)}")
        self._bin = {t: (binaries or {}).get(t) or shutil.which(t) or t for t in TOOLS}
        self.grace_seconds = grace_seconds
        self.command_timeout = command_timeout
        self.python = python
        self.accounting: bool | None = None  # None: not yet known; False after "disabled"

    # -- running Slurm commands -------------------------------------------------------------

    async def _run(self, tool: str, *args: str, check: bool = True) -> tuple[int, str, str]:
        """Run one Slurm tool; ``(returncode, stdout, stderr)``; AdapterError if it fails."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self._bin[tool],
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise AdapterError(f"cannot run {tool} ({self._bin[tool]}): {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except TimeoutError:
            raise AdapterError(
                f"{tool} did not answer within {self.command_timeout:g} s", retryable=True
            ) from None
        finally:
            if proc.returncode is None:  # timed out or our caller was cancelled: no orphans
                proc.kill()
                await asyncio.shield(proc.wait())
        rc = proc.returncode if proc.returncode is not None else -1
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise AdapterError(
                f"{tool} failed (exit {rc}): {stderr.strip()[:500] or stdout.strip()[:500]}",
                retryable="contact" in stderr or "timed out" in stderr,
            )
        return rc, stdout, stderr

    async def _squeue(self) -> list[sp.SlurmJob]:
        return sp.parse_squeue((await self._run("squeue", "--json"))[1])

    async def _sacct(self, *args: str) -> list[sp.SlurmJob] | None:
        """Jobs from ``sacct --json``, or ``None`` when the cluster has no accounting."""
        if self.accounting is False:
            return None
        rc, out, err = await self._run("sacct", "--json", "-X", *args, check=False)
        if rc != 0 and "disabled" in (err + out):
            self.accounting = False
            return None
        if rc != 0:
            raise AdapterError(f"sacct failed (exit {rc}): {err.strip()[:500]}", retryable=True)
        self.accounting = True
        return sp.parse_sacct(out)

    # -- the Adapter interface ----------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> str:
        """Write the batch script and launch file into ``spec.output_dir`` and ``sbatch`` them.

        Returns Slurm's job id. Raises AdapterError for a name that may not reach Slurm, workers
        that one Slurm job cannot express, or sbatch refusing the job.
        """
        layout = job_layout(spec)
        args = self._sbatch_args(spec, layout)
        out_dir = spec.output_dir
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        launch = {
            "job_id": spec.job_id,
            "argv": list(spec.command),
            "env": dict(spec.env),
            "cwd": spec.working_dir,
            "workers": layout.by_node,
            "num_workers": len(spec.workers),
            "workers_per_node": layout.per_node,
            "gpus_per_worker": layout.gpus,
        }
        launch_path = out_dir / LAUNCH_FILE
        await asyncio.to_thread(launch_path.write_text, json.dumps(launch, indent=1))
        run = [self.python, "-c", LAUNCHER, str(launch_path)]
        if len(spec.workers) > 1:
            run = [
                "srun",
                "--export=ALL",
                f"--ntasks={len(spec.workers)}",
                f"--ntasks-per-node={layout.per_node}",
                "--kill-on-bad-exit=1",
                *run,
            ]
        script = (
            "#!/bin/sh\n"
            f"# Apportion job {spec.job_id}: generated by the slurm adapter; the command is in\n"
            f"# {LAUNCH_FILE} and is exec'd verbatim by the launcher (no shell parses it).\n"
            'PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"\nexport PATH\n'
            f"exec {shlex.join(run)}\n"
        )
        script_path = out_dir / SCRIPT_FILE
        await asyncio.to_thread(script_path.write_text, script)
        _, out, _ = await self._run("sbatch", *args, str(script_path))
        return sp.parse_sbatch_parsable(out)

    def _sbatch_args(self, spec: JobSpec, layout: Layout) -> list[str]:
        tag = f"apportion:{check_name(spec.job_id, 'job id')}"
        job_name = f"{tag}:{check_name(spec.name, 'job name')}" if spec.name else tag
        log = str(spec.output_dir / LOG_FILE)
        if "%" in log or "\n" in log:
            raise AdapterError(
                f"output_dir {str(spec.output_dir)!r} may not contain '%' or newline"
            )
        wd = spec.working_dir or str(spec.output_dir)
        if "\n" in wd or not wd.startswith("/"):
            raise AdapterError(f"working_dir {wd!r} must be an absolute path without newline")
        args = [
            "--parsable",
            f"--job-name={job_name}",
            f"--comment={tag}",
            f"--output={log}",
            f"--error={log}",
            f"--chdir={wd}",
            "--export=NONE",
            "--no-requeue",
            f"--nodes={len(layout.nodes)}",
            f"--ntasks={len(spec.workers)}",
            f"--ntasks-per-node={layout.per_node}",
            f"--nodelist={','.join(layout.nodes)}",
        ]
        for key in ("partition", "account", "qos"):
            value = spec.scheduler.get(key)
            if value is not None:
                args.append(f"--{key}={check_name(value, key)}")
        if layout.gpus:
            args.append(f"--gres=gpu:{layout.gpus * layout.per_node}")
        if layout.vcpus:
            args.append(f"--cpus-per-task={layout.vcpus}")
        if layout.memory_mb:
            args.append(f"--mem={layout.memory_mb * layout.per_node}")
        if spec.walltime_seconds is not None:
            if spec.walltime_seconds <= 0:
                raise AdapterError(f"walltime must be positive, got {spec.walltime_seconds}")
            args.append(f"--time={sp.format_walltime(spec.walltime_seconds)}")
        return args

    async def find(self, spec: JobSpec) -> str | None:
        """Slurm's id of the job tagged ``apportion:<spec.job_id>`` (the lowest if several)."""
        tag = f"apportion:{check_name(spec.job_id, 'job id')}"
        jobs = await self._squeue()
        hits = [j for j in jobs if _tagged(j, tag)]
        if not hits:
            hits = [j for j in await self._sacct("--starttime=now-30days") or [] if _tagged(j, tag)]
        return min((j.job_id for j in hits), key=int, default=None)

    async def poll(self, spec: JobSpec, scheduler_job_id: str) -> BackendStatus:
        """The job's state: ``squeue``; once it left squeue, ``sacct`` or ``scontrol show job``."""
        job_id = _check_id(scheduler_job_id)
        for job in await self._squeue():
            if job.job_id == job_id:
                return sp.status_of(job)
        acct = await self._sacct(f"--jobs={job_id}")
        for job in acct or []:
            if job.job_id == job_id:
                return sp.status_of(job)
        rc, out, _ = await self._run("scontrol", "show", "job", "-o", job_id, check=False)
        found = sp.parse_scontrol_job(out) if rc == 0 else None
        if found is not None and found.job_id == job_id:
            return sp.status_of(found)
        return BackendStatus(
            BackendState.UNKNOWN,
            reason=f"Slurm has no record of job {job_id} (older than MinJobAge, no accounting)",
        )

    async def cancel(self, spec: JobSpec, scheduler_job_id: str) -> None:
        """``scancel`` the job (a finished or unknown job is not an error), then wait up to
        ``grace_seconds`` for Slurm to report it finished."""
        job_id = _check_id(scheduler_job_id)
        await self._run("scancel", job_id)
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline:
            status = await self.poll(spec, job_id)
            if status.state.finished or status.state is BackendState.UNKNOWN:
                return
            await asyncio.sleep(0.2)

    async def logs(
        self, spec: JobSpec, scheduler_job_id: str, *, offset: int = 0, limit: int = 65536
    ) -> LogChunk:
        """Text of the job's output file (stdout and stderr together) from byte ``offset``."""
        job_id = _check_id(scheduler_job_id)
        finished = (await self.poll(spec, job_id)).state.finished  # before reading: no lost tail
        data, size = await asyncio.to_thread(_read_from, spec.output_dir / LOG_FILE, offset, limit)
        if offset + len(data) < size:  # more follows: do not split a UTF-8 character
            data = _trim_partial_utf8(data)
        end = offset + len(data)
        return LogChunk(data.decode(errors="replace"), end, finished and end >= size)

    async def usage(self, spec: JobSpec, scheduler_job_id: str) -> dict[str, Any]:
        """Seed 002's fields. Only ``cpuSeconds`` is known, and only with accounting (slurmdbd);
        every other value is None (Slurm keeps no per-job memory/IO without jobacct_gather)."""
        job_id = _check_id(scheduler_job_id)
        result: dict[str, Any] = dict.fromkeys(_USAGE_KEYS)
        result["timeInstant"] = time.time()
        if self.accounting is not False:
            rc, out, err = await self._run("sacct", "--json", "-X", f"--jobs={job_id}", check=False)
            if rc == 0:
                self.accounting = True
                result["cpuSeconds"] = sp.sacct_cpu_seconds(out, job_id)
            elif "disabled" in out + err:
                self.accounting = False
        return result

    async def node_states(self) -> list[sp.SlurmNode]:
        """Every node as ``sinfo --json`` reports it now (state, CPUs, GRES in use, load)."""
        return sp.parse_sinfo_nodes((await self._run("sinfo", "--json"))[1])

    async def partitions(self) -> list[dict[str, Any]]:
        """Slurm's partitions with node count, CPUs and GPUs (total and in use) from sinfo."""
        _, out, _ = await self._run("scontrol", "show", "partition", "-o")
        parts = sp.parse_scontrol_partitions(out)
        nodes = sp.parse_sinfo_nodes((await self._run("sinfo", "--json"))[1])
        for p in parts:
            members = [n for n in nodes if p["name"] in n.partitions]
            p["scheduler"] = "slurm"
            p["totalGpus"] = sum(c for n in members for _, c in sp.parse_gpu_gres(n.gres))
            p["usedGpus"] = sum(c for n in members for _, c in sp.parse_gpu_gres(n.gres_used))
        return parts

    async def discover(self, scheduler: dict[str, Any]) -> list[dict[str, Any]]:
        """``nodeData`` of the nodes in ``scheduler["partition"]`` (all nodes if none), sorted by id.

        GPU memory comes from ``scheduler["gpu_memory_mb"]`` (default 0: unknown to Slurm)."""
        partition = scheduler.get("partition")
        if partition is not None:
            check_name(partition, "partition")
        mem = scheduler.get("gpu_memory_mb", 0)
        if not isinstance(mem, int) or isinstance(mem, bool) or mem < 0:
            raise AdapterError(f"gpu_memory_mb must be a whole number of MB >= 0, got {mem!r}")
        nodes = sp.parse_sinfo_nodes((await self._run("sinfo", "--json"))[1])
        if partition is not None:
            nodes = [n for n in nodes if partition in n.partitions]
        return sp.node_data(nodes, gpu_memory_mb=mem)


# -- the job's shape in Slurm terms, and the launcher that runs inside it ---------------------------


def check_name(value: Any, what: str) -> str:
    """``value`` if it may reach Slurm (:data:`NAME_PATTERN`); AdapterError saying why not."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise AdapterError(
            f"{what} {value!r} cannot be passed to Slurm: use 1-128 of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit (no spaces or newlines)"
        )
    return value


@dataclass(frozen=True)
class Layout:
    """How a job's workers map onto one Slurm job: ``per_node`` tasks on each of ``nodes``."""

    nodes: tuple[str, ...]  # sorted, as Slurm orders a nodelist of plain names
    per_node: int
    gpus: int  # per worker
    vcpus: int | None  # per worker
    memory_mb: int | None  # per worker
    by_node: dict[str, list[int]]  # node -> worker indices, in SLURM_LOCALID order


def job_layout(spec: JobSpec) -> Layout:
    """Check that ``spec`` is one Slurm job (same resources per worker, same workers per node)."""
    if not spec.command or not all(isinstance(a, str) and "\0" not in a for a in spec.command):
        raise AdapterError("command must be a non-empty argv list of strings without NUL")
    for key, value in spec.env.items():
        if not _ENV_NAME.fullmatch(key) or "\0" in value:
            raise AdapterError(f"env variable {key!r} is not a valid name=value pair")
    if not spec.workers:
        raise AdapterError("a job needs at least one worker")
    by_node: dict[str, list[int]] = {}
    for w in sorted(spec.workers, key=lambda w: w.index):
        by_node.setdefault(check_name(w.node_id, "node name"), []).append(w.index)
    shapes = {(len(w.gpus), w.vcpus, w.memory_mb) for w in spec.workers}
    counts = {len(v) for v in by_node.values()}
    if len(shapes) > 1 or len(counts) > 1:
        raise AdapterError(
            "one Slurm job needs the same GPUs, vCPUs and memory for every worker and the same "
            f"number of workers on every node; got shapes {sorted(shapes, key=str)} and "
            f"workers per node {dict(sorted((n, len(v)) for n, v in by_node.items()))}"
        )
    gpus, vcpus, memory_mb = shapes.pop()
    nodes = tuple(sorted(by_node))
    return Layout(nodes, counts.pop(), gpus, vcpus, memory_mb, {n: by_node[n] for n in nodes})


LAUNCHER = """\
import json, os, sys
s = json.load(open(sys.argv[1]))
local = int(os.environ.get("SLURM_LOCALID", "0"))
mine = s["workers"].get(os.environ.get("SLURMD_NODENAME", ""), [])
index = mine[local] if local < len(mine) else int(os.environ.get("SLURM_PROCID", "0"))
env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
env.update(os.environ)
env.update(s["env"])
cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
per = s["gpus_per_worker"]
if cvd is not None and s["workers_per_node"] > 1 and per > 0:
    cvd = ",".join(cvd.split(",")[local * per:(local + 1) * per])
if cvd is not None:
    env["CUDA_VISIBLE_DEVICES"] = cvd
env["APPORTION_JOB_ID"] = s["job_id"]
env["APPORTION_WORKER_INDEX"] = str(index)
env["APPORTION_NUM_WORKERS"] = str(s["num_workers"])
if s["cwd"]:
    os.chdir(s["cwd"])
try:
    os.execvpe(s["argv"][0], s["argv"], env)
except OSError as exc:
    print("apportion launcher: cannot run %r: %s" % (s["argv"][0], exc), file=sys.stderr)
    sys.exit(127)
"""
"""Runs inside the Slurm job: sets the worker's environment and execs the argv from JSON."""


def _tagged(job: sp.SlurmJob, tag: str) -> bool:
    return job.comment == tag or job.name == tag or job.name.startswith(tag + ":")


def _check_id(scheduler_job_id: str) -> str:
    if not scheduler_job_id.isdigit() or not scheduler_job_id.isascii():
        raise AdapterError(f"not a Slurm job id: {scheduler_job_id!r}")
    return scheduler_job_id


def _read_from(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(min(offset, size))
            return f.read(max(0, limit)), size
    except FileNotFoundError:
        return b"", 0


def _trim_partial_utf8(b: bytes) -> bytes:
    """Drop an incomplete UTF-8 sequence at the end (it is read whole next time)."""
    for back in range(1, min(4, len(b)) + 1):
        byte = b[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
            need = 1 if byte < 0x80 else 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2
            return b if back >= need else b[:-back]
    return b
