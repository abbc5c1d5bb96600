"""Reading what LSF's commands print (facts from LSF 10.1).

- ``bsub`` prints ``Job <1234> is submitted to queue <normal>.`` (or ``… to default queue
  <normal>.``), on stdout.
- ``bjobs -o "<fields>" -json [-a] [id | -J name]`` prints ``{"COMMAND": "bjobs", "JOBS": n,
  "RECORDS": [{"JOBID": "1234", "STAT": "RUN", "EXIT_CODE": "", …}]}``; every value is a
  string (empty when unset). ``STAT`` is ``PEND``, ``PSUSP`` (held while pending), ``RUN``,
  ``USUSP``/``SSUSP`` (suspended), ``PROV``, ``WAIT``, ``DONE`` (exit 0), ``EXIT`` (non-zero,
  with ``EXIT_CODE``; killed by ``bkill``: ``EXIT_REASON`` ``TERM_OWNER``), ``ZOMBI``,
  ``UNKWN``. An id LSF no longer knows is a record ``{"JOBID": "1234", "ERROR": "Job <1234>
  is not found"}``; a name nothing has answers ``No job found`` (not JSON).
- ``CPU_USED`` is ``HH:MM:SS`` in newer versions, ``0.5 second(s)`` in older ones.
- ``bqueues -w`` prints a header (``QUEUE_NAME PRIO STATUS …``), then one line per queue.
"""

from __future__ import annotations

import json
import re
from typing import Any

SUBMITTED = re.compile(r"Job <([0-9]+)> is submitted")
JOB_ID = re.compile(r"[0-9]+")


def parse_job_id(bsub_stdout: str) -> str | None:
    """The job id ``bsub`` printed; None when it printed something else."""
    match = SUBMITTED.search(bsub_stdout)
    return match.group(1) if match else None


def parse_records(bjobs_json: str) -> list[dict[str, str]]:
    """The records of ``bjobs … -json``; [] for ``No job found``. ``ValueError`` for
    anything else."""
    if not bjobs_json.strip() or bjobs_json.strip().startswith("No job found"):
        return []
    document: Any = json.loads(bjobs_json)
    records = document.get("RECORDS") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise ValueError("bjobs -json answered without RECORDS")
    return [{str(k): str(v) for k, v in r.items()} for r in records if isinstance(r, dict)]


def cpu_seconds(cpu_used: str) -> float | None:
    """``CPU_USED`` (``HH:MM:SS`` or ``0.5 second(s)``) as seconds; None when unset."""
    text = cpu_used.strip()
    old = re.fullmatch(r"([0-9.]+) second\(s\)", text)
    if old is not None:
        return float(old.group(1))
    parts = text.split(":")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return float(int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2]))
    return None


def queue_names(bqueues: str) -> list[str]:
    """The queue names of ``bqueues -w``."""
    lines = [line for line in bqueues.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("QUEUE_NAME"):
        return []
    return [line.split()[0] for line in lines[1:]]
