"""Small shared pieces of Slurm's command-line text: a JSON document a command printed, one
``scontrol … -o`` record, the job id ``sbatch --parsable`` printed, and ``--time`` for a walltime.

Used by the job and node parsers beside it (:mod:`.slurm_job_parse`, :mod:`.slurm_node_parse`)
and by :mod:`apportion.adapters.slurm.adapter`. No I/O.
``scontrol`` has no ``--json`` in Slurm 22.05: ``scontrol show … -o`` prints one ``Key=Value``
line per record. Malformed output raises :class:`AdapterError`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from apportion.adapters.base import AdapterError


def load_json(text: str, what: str) -> dict[str, Any]:
    """The JSON document a Slurm command printed; AdapterError naming ``what`` if it is not one."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AdapterError(f"{what} printed no JSON ({exc})", retryable=True) from exc
    if not isinstance(doc, dict):
        raise AdapterError(f"{what} printed JSON that is not an object", retryable=True)
    errors = doc.get("errors") or []
    if errors:
        raise AdapterError(f"{what} reported errors: {errors}", retryable=True)
    return doc


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``scontrol show … -o`` line as ``{key: value}`` (values may hold spaces, e.g. ``OS``)."""
    marks = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(line)
        out[m.group(1)] = line[m.end() : end].strip()
    return out


def parse_sbatch_parsable(stdout: str) -> str:
    """The job id ``sbatch --parsable`` printed (``"42"`` or ``"42;cluster"``)."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise AdapterError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return job_id


def format_walltime(seconds: float) -> str:
    """Slurm's ``--time`` for a walltime in seconds, rounded up: 90.2 → ``0-00:01:31``."""
    total = max(1, int(-(-seconds // 1)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
