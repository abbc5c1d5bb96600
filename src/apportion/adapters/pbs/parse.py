"""Reading what PBS/Torque's commands print (facts from Torque 6 and OpenPBS 20+).

- ``qsub`` prints the new job's id on one line: ``90169.prd-cluster-01.example.org`` (Torque,
  OpenPBS: the number, a dot, the server's name).
- ``qstat -f [id]`` prints one block per job: ``Job Id: <id>``, then ``    key = value`` lines
  (four spaces); a long value continues on lines that start with a tab. ``job_state`` is
  ``Q`` queued, ``H`` held, ``W`` waiting for its start time, ``T`` moving, ``S`` suspended,
  ``R`` running, ``E`` exiting, ``C`` completed (Torque keeps completed jobs for
  ``keep_completed`` seconds; OpenPBS shows them with ``qstat -x`` as ``F``), with
  ``exit_status``; ``Variable_List`` holds the ``-v`` variables, comma-separated.
- ``qstat`` of an id the server does not know answers non-zero with ``qstat: Unknown Job Id
  <id>`` (Torque) or ``qstat: <id> Job has finished, use -x or -H to obtain historical job
  information`` (OpenPBS).
- ``qstat -Q`` prints a header, a line of dashes, then one line per queue, its name first.
"""

from __future__ import annotations

import re

JOB_ID = re.compile(r"[0-9]+(?:\.[A-Za-z0-9][A-Za-z0-9._-]*)?")
"""A PBS job id as qsub prints it."""


def parse_job_id(qsub_stdout: str) -> str | None:
    """The job id ``qsub`` printed; None when it printed something else."""
    line = qsub_stdout.strip().splitlines()[0].strip() if qsub_stdout.strip() else ""
    return line if JOB_ID.fullmatch(line) else None


def parse_qstat_full(text: str) -> list[dict[str, str]]:
    """Each job of ``qstat -f``: its attributes by name, with ``Job Id`` as ``job_id``."""
    jobs: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    last: str | None = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = {"job_id": line.partition(":")[2].strip()}
            jobs.append(current)
            last = None
        elif current is None or not line.strip():
            continue
        elif line.startswith("\t") and last is not None:
            current[last] += line[1:]  # the value goes on after the tab, as it was cut
        elif " = " in line:
            key, _, value = line.strip().partition(" = ")
            current[key] = value
            last = key
    return jobs


def variables(job: dict[str, str]) -> dict[str, str]:
    """The job's ``Variable_List`` as a mapping (values with a comma inside are cut there,
    as PBS itself writes them unquoted)."""
    found: dict[str, str] = {}
    for pair in job.get("Variable_List", "").split(","):
        key, sep, value = pair.partition("=")
        if sep:
            found[key.strip()] = value
    return found


def seconds(hms: str) -> float | None:
    """``HH:MM:SS`` (hours may exceed 24) as seconds; None for anything else."""
    parts = hms.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    hours, minutes, secs = (int(p) for p in parts)
    return float(hours * 3600 + minutes * 60 + secs)


def queue_names(qstat_queues: str) -> list[str]:
    """The queue names of ``qstat -Q``."""
    lines = qstat_queues.splitlines()
    dashes = next((i for i, line in enumerate(lines) if line.startswith("---")), None)
    if dashes is None:
        return []
    return [line.split()[0] for line in lines[dashes + 1 :] if line.strip()]


def walltime(limit_seconds: float) -> str:
    """A walltime for ``qsub -l walltime=``: ``HH:MM:SS``, rounded up to the second."""
    whole = int(-(-limit_seconds // 1))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
