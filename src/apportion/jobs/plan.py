"""A job's plan: what submitting it would do now, without submitting it (``POST /jobs/plan``,
``apportion submit --dry-run``; as ``nomad job plan`` and ``sbatch --test-only``).

Built by :meth:`JobService.plan <apportion.jobs.service.JobService.plan>` from the same checks
and the same admission and placement code as a submit and the next admission cycle; nothing is
stored, reserved or announced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apportion.engine.decisions import Decision, Placement, placements_json
from apportion.jobs.models import JobConfig
from apportion.timefmt import iso_utc


@dataclass(frozen=True)
class JobPlan:
    """The job as it would be stored (its queue's defaults applied), where it would wait, and
    where its workers would go if an admission cycle ran now — or why it would wait."""

    config: JobConfig
    priority: int
    queue_position: int  # 1-based, in its queue's waiting order
    placements: tuple[Placement, ...] | None  # one per worker; None: it would wait
    decision: Decision | None
    reason_code: str | None  # why it would wait (an admission reason code); None: it starts
    reason: str  # the same in words, or where it would start
    estimated_start: float | None  # now when it would start; None: no estimate (see backfill)

    @property
    def would_start(self) -> bool:
        """Whether the next admission cycle would start it, the fleet staying as it is."""
        return self.placements is not None

    def public(self) -> dict[str, Any]:
        """The plan as ``POST /jobs/plan`` answers it."""
        return {
            "would_start": self.would_start,
            "queue": self.config.queue,
            "priority": self.priority,
            "queue_position": self.queue_position,
            "estimated_start": iso_utc(self.estimated_start),
            "reason": {"code": self.reason_code, "message": self.reason},
            "allocation": None if self.placements is None else placements_json(self.placements),
            "decision": None if self.decision is None else self.decision.to_json(),
            "config": self.config.model_dump(),
        }
