"""Job files for ``apportion submit``: a TOML job spec, or a script with ``#APPORTION``
directives, as ``#SBATCH`` lines work for ``sbatch``.

``apportion submit job.toml``::

    name = "train"
    command = ["python3", "train.py", "--epochs", "3"]
    workers = 2
    gpus = 1            # per worker
    walltime = "2h"
    queue = "training"
    [env]
    WANDB_MODE = "offline"

``apportion submit train.sh`` runs the script (by its absolute path, which the job's user must
be able to read and run on the server's host); lines ``#APPORTION --gpus 2 --walltime 1:00:00``
before its first command give the flags. A flag on the command line beats the file. What the
file asked for is stored with the job as its configuration, which ``apportion status`` shows.
"""

from __future__ import annotations

import argparse
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apportion.cli.common import fail

DIRECTIVE = "#APPORTION"
SCRIPT_HEAD_BYTES = 64 * 1024  # where directives are looked for (sbatch: before the first command)
SPEC_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "queue": str,
    "application": str,  # NAME:VERSION; then command may be left out
    "dependency": str,  # as --dependency (sbatch -d)
    "array": str,  # as --array (sbatch --array)
    "priority": int,
    "command": list,
    "env": dict,
    "working_dir": str,
    "walltime": (str, int, float),
    "workers": int,
    "gpus": int,
    "gpu_model": str,
    "labels": dict,
    "input_files": list,  # stored files' ids, copied into the working directory
    "unpack_files": list,  # stored archives' ids, extracted there
    "output_files": list,  # patterns of the files kept when the job ends
}


@dataclass
class JobSpec:
    """What a job file asks for; ``None`` where it says nothing (the flags' defaults hold)."""

    command: list[str]
    values: dict[str, Any] = field(default_factory=dict)


def read_job_file(argv: list[str]) -> JobSpec | None:
    """The job file ``argv`` names — ``[spec.toml]``, or ``[script, args…]`` with
    ``#APPORTION`` lines — or None when ``argv`` is a plain command. Exits with a usage
    error naming the file and the line or key for anything it cannot read."""
    if not argv:
        return None
    path = Path(argv[0])
    if path.suffix == ".toml" and path.is_file():
        if len(argv) > 1:  # `submit job.toml --wait`: the flag would become a program argument
            fail(
                f"{path} is a job file and takes no arguments, but {' '.join(argv[1:])!r}"
                f" follows it: give flags before the job file (apportion submit"
                f" {' '.join(argv[1:])} {argv[0]})",
                code=2,
            )
        return _toml(path)
    if not path.is_file():
        return None  # a program to run (python3, /bin/true…), not a file here
    try:
        with path.open("rb") as script:
            head = script.read(SCRIPT_HEAD_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None  # a program (an interpreter, a binary), not a script with directives
    text = head.decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(DIRECTIVE)]
    if not lines:
        return None  # a script without directives is just a command
    return JobSpec([str(path.resolve()), *argv[1:]], _directives(path, lines))


def _toml(path: Path) -> JobSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"{path}: not a TOML job file: {exc}", code=2)
    for key, value in data.items():
        expected = SPEC_KEYS.get(key)
        if expected is None:
            fail(f"{path}: unknown key {key!r}; a job file takes {', '.join(SPEC_KEYS)}", code=2)
        if not isinstance(value, expected) or isinstance(value, bool):
            fail(f"{path}: {key} has the wrong type ({type(value).__name__})", code=2)
    command = data.pop("command", None)
    if command is None and "application" in data:
        command = []  # the application's own
    elif not command or not all(isinstance(a, str) for a in command):
        fail(
            f"{path}: command must be a non-empty list of strings (the job's argv), unless"
            " application names an application that has one",
            code=2,
        )
    return JobSpec(list(command), data)


def _directives(path: Path, lines: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog=f"{DIRECTIVE} in {path}", add_help=False)
    parser.add_argument("--gpus", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--queue")
    parser.add_argument("--priority", type=int)
    parser.add_argument("--name")
    parser.add_argument("--walltime")
    parser.add_argument("--gpu-model", dest="gpu_model")
    parser.add_argument("--chdir", "-D", dest="working_dir")
    parser.add_argument("--env", action="append")
    parser.add_argument("--dependency", "-d")
    parser.add_argument("--array", "-a")
    words = [w for line in lines for w in shlex.split(line[len(DIRECTIVE) :])]
    found, unknown = parser.parse_known_args(words)
    if unknown:
        fail(
            f"{path}: unknown {DIRECTIVE} option(s) {' '.join(unknown)}; they take --gpus,"
            " --workers, --queue, --priority, --name, --walltime, --gpu-model, --chdir, --env,"
            " --dependency, --array",
            code=2,
        )
    values = {k: v for k, v in vars(found).items() if v is not None}
    if "env" in values:
        pairs = [p.partition("=") for p in values["env"]]
        values["env"] = {key: value for key, _, value in pairs}
    return values
