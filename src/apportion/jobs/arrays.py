"""Job arrays (issue 13, item 1), in ``sbatch --array``'s words — pure decisions.

``config.array`` is ``0-999%50``: comma-separated indices and ranges (``N``, ``N-M``,
``N-M:STEP``), then optionally ``%K``, the most tasks that may run at once. One submission
becomes one job per index — a *task* — which shares the array's id and knows its index
(``APPORTION_ARRAY_JOB_ID``, ``APPORTION_ARRAY_TASK_ID``, ``APPORTION_ARRAY_TASK_COUNT``,
``APPORTION_ARRAY_TASK_MIN``, ``APPORTION_ARRAY_TASK_MAX``, and ``SLURM_ARRAY_TASK_ID`` so
that scripts written for Slurm arrays read their index unchanged). Each task is placed,
dispatched, followed and ended as any job; a task beyond the limit waits with reason
``ArrayTaskLimit`` without counting as bypassed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from apportion.errors import InvalidRequest

MAX_TASKS = 10_000
"""The most tasks one array may have (Slurm's default ``MaxArraySize`` is 1001)."""
MAX_INDEX = 1_000_000
ITEM = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")


@dataclass(frozen=True)
class ArraySpec:
    """The indices of an array's tasks, in order, and the most that may run at once."""

    indices: tuple[int, ...]
    limit: int | None

    def environment(self, array_job_id: str, index: int) -> dict[str, str]:
        """The variables of task ``index`` (see the module's docstring)."""
        return {
            "APPORTION_ARRAY_JOB_ID": array_job_id,
            "APPORTION_ARRAY_TASK_ID": str(index),
            "APPORTION_ARRAY_TASK_COUNT": str(len(self.indices)),
            "APPORTION_ARRAY_TASK_MIN": str(self.indices[0]),
            "APPORTION_ARRAY_TASK_MAX": str(self.indices[-1]),
            "SLURM_ARRAY_TASK_ID": str(index),
        }


@lru_cache(maxsize=1024)
def parse_array(text: str) -> ArraySpec:
    """The :class:`ArraySpec` of ``text``; :class:`InvalidRequest` naming
    ``body.config.array`` and what is wrong."""
    path = "body.config.array"
    body, percent, limit_text = text.strip().partition("%")
    limit: int | None = None
    if percent:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise InvalidRequest(
                f"config.array {text!r}: after % comes the most tasks that may run at once,"
                " a whole number of at least 1",
                path=path,
            )
        limit = int(limit_text)
    indices: set[int] = set()
    for item in body.split(","):
        match = ITEM.fullmatch(item.strip())
        if match is None:
            raise InvalidRequest(
                f"config.array {text!r}: {item.strip()!r} is no index or range; write indices"
                " and ranges such as 0-999, 1,3,5, 0-20:4, optionally with %K (e.g. 0-999%50)",
                path=path,
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step < 1 or last > MAX_INDEX:
            raise InvalidRequest(
                f"config.array {text!r}: {item.strip()!r} must go up from its first index,"
                f" by a step of at least 1, to at most {MAX_INDEX}",
                path=path,
            )
        if (last - first) // step + 1 + len(indices) > MAX_TASKS:
            raise InvalidRequest(
                f"config.array {text!r} has more than {MAX_TASKS} tasks; split it", path=path
            )
        indices.update(range(first, last + 1, step))
    return ArraySpec(tuple(sorted(indices)), limit)
