"""A hold: GPUs reserved by an allocation or a job, until its lease ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apportion.engine.decisions import Placement, placements_json
from apportion.ownership import Owner
from apportion.registry.fleet_structure import GpuKey


@dataclass
class Hold:
    """GPUs held for ``owner`` (None: for the server itself) until ``expires_at``."""

    allocation_id: str
    owner: Owner | None
    request_id: str | None
    policy_uri: str
    placements: tuple[Placement, ...]
    gpu_keys: list[GpuKey]
    created_at: float
    expires_at: float
    kind: str = "allocation"  # or "job": released when the job ends

    def public(self) -> dict[str, Any]:
        return {
            "allocation_id": self.allocation_id,
            "policy_rule_uri": self.policy_uri,
            "request_id": self.request_id,
            "placements": placements_json(self.placements),
            "kind": self.kind,
            "account": None if self.owner is None else self.owner.account,
            "user": None if self.owner is None else self.owner.user,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
