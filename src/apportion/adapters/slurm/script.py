"""The batch script and launcher of a Slurm job, for :meth:`SlurmAdapter.submit`.

This module's one job is to turn a placed :class:`~apportion.adapters.base.JobSpec`
into what ``sbatch`` runs: :func:`job_layout` checks that the workers fit one Slurm job and
describes them (:class:`Layout`); :func:`write_script` writes ``slurm-launch.json`` (argv, env,
worker layout) and ``slurm-job.sh`` into ``spec.output_dir``.

How the user's argv reaches the job verbatim: the batch script runs a fixed launcher,
``python3 -c <LAUNCHER> <that json file>`` (under ``srun`` for several workers). The launcher
reads the argv from JSON and ``os.execvpe``\\ s it: no shell ever parses a user's word, so
spaces, quotes, ``$(...)`` and ``;`` arrive unchanged. The only text put into the script is the
launcher constant and file paths, each quoted with :func:`shlex.quote`.

Names that reach Slurm must match :data:`NAME_PATTERN` (:func:`check_name`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.adapters.base import AdapterError, JobSpec
from apportion.adapters.distributed import rendezvous_port
from apportion.adapters.private_files import write_private

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a name reaching Slurm must fully match: no newline, space, quote, comma or colon."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SCRIPT_FILE = "slurm-job.sh"
LAUNCH_FILE = "slurm-launch.json"


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
import json, os, subprocess, sys
s = json.load(open(sys.argv[1]))
local = int(os.environ.get("SLURM_LOCALID", "0"))
mine = s["workers"].get(os.environ.get("SLURMD_NODENAME", ""), [])
index = mine[local] if local < len(mine) else int(os.environ.get("SLURM_PROCID", "0"))
env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
env.update(os.environ)
env.update(s["env"])
cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
per = s["gpus_per_worker"]
if cvd is not None and s["workers_per_node"] > 1 and per > 1:  # one each: torchrun's layout
    cvd = ",".join(cvd.split(",")[local * per:(local + 1) * per])
if cvd is not None:
    env["CUDA_VISIBLE_DEVICES"] = cvd
env["APPORTION_JOB_ID"] = s["job_id"]
env["APPORTION_WORKER_INDEX"] = str(index)
env["APPORTION_NUM_WORKERS"] = str(s["num_workers"])
env.update(RANK=str(index), WORLD_SIZE=str(s["num_workers"]), LOCAL_RANK=str(local))
env["LOCAL_WORLD_SIZE"] = str(s["workers_per_node"])
master = "127.0.0.1"
if s["num_workers"] > 1:  # worker 0's node, at the address Slurm reaches it by (NodeAddr)
    master = s["master_addr"]
    try:
        shown = subprocess.run(["scontrol", "show", "node", "-o", master], capture_output=True,
                               text=True, timeout=10).stdout
        master = next((w[9:] for w in shown.split() if w.startswith("NodeAddr=")), master)
    except (OSError, subprocess.SubprocessError):
        pass
env.setdefault("MASTER_ADDR", master)
env.setdefault("MASTER_PORT", str(s["master_port"]))
if s["cwd"]:
    os.chdir(s["cwd"])
try:
    os.execvpe(s["argv"][0], s["argv"], env)
except OSError as exc:
    print("apportion launcher: cannot run %r: %s" % (s["argv"][0], exc), file=sys.stderr)
    sys.exit(127)
"""
"""Runs inside the Slurm job: sets the worker's environment and execs the argv from JSON."""


def write_script(spec: JobSpec, layout: Layout, python: str) -> Path:
    """Write the launch file and the batch script into ``spec.output_dir``; the script's path.

    ``python`` is the interpreter the script runs :data:`LAUNCHER` with.
    """
    out_dir = spec.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    launch = {
        "job_id": spec.job_id,
        "argv": list(spec.command),
        "env": dict(spec.env),
        "cwd": spec.working_dir,
        "workers": layout.by_node,
        "num_workers": len(spec.workers),
        "workers_per_node": layout.per_node,
        "gpus_per_worker": layout.gpus,
        "master_addr": next(n for n, indices in layout.by_node.items() if 0 in indices),
        "master_port": rendezvous_port(spec.run_id),
    }
    launch_path = out_dir / LAUNCH_FILE
    write_private(launch_path, json.dumps(launch, indent=1), spec.run_as)
    run = [python, "-c", LAUNCHER, str(launch_path)]
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
    write_private(script_path, script, spec.run_as)
    return script_path
