"""The typed values of a decision: placements, rejections and their reasons, the outcome of a
policy and the decision record (``explain``, a job's ``decision``).

Who uses it: the placement kernel (:mod:`apportion.engine.placement`) answers with an
:data:`Outcome`; the policy runtime turns a seed-contract policy's output into one too; the
allocation service holds :class:`Placement` values and builds the :class:`Decision`; the edges
(the WebSocket and ``POST /allocate`` through ``server/dispatch.py``, the hold journal, the job
record) call ``to_json`` once. "No" is an answer (:class:`Unplaceable`), never an exception
caught for control flow; only a broken policy raises. Pure: no I/O, no numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, TypeAlias

from pydantic import TypeAdapter

from apportion.errors import NoFeasiblePlacement
from apportion.registry.fleet_structure import GpuKey

if TYPE_CHECKING:
    from apportion.engine.explain import Evidence

JsonValue: TypeAlias = (
    str | int | float | bool | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None
)
"""A value that came from, or goes to, JSON."""


class Reason(StrEnum):
    """Why a candidate node could not take a request; the order is the order of the texts."""

    NODE_FILTER = "node_filter"
    GPU_MODEL = "gpu_model"
    GPU_MEMORY = "gpu_memory"
    INSUFFICIENT_GPUS = "insufficient_gpus"
    VCPUS = "vcpus"
    MEMORY = "memory"
    NVLINK = "nvlink"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one request goes: a cluster, optionally a node of it and GPU indices on the node.

    ``extra`` holds the other keys a seed-contract policy put in its placement; they are passed
    through unchanged (CONTRACTS §3)."""

    cluster_id: str
    node_id: str | None = None
    gpus: tuple[str, ...] | None = None
    extra: Mapping[str, JsonValue] = field(default_factory=dict)

    @property
    def gpu_keys(self) -> tuple[GpuKey, ...]:
        """The placement's GPUs as fleet keys (none without a node)."""
        if self.node_id is None or not self.gpus:
            return ()
        return tuple((self.cluster_id, self.node_id, g) for g in self.gpus)

    def to_json(self) -> dict[str, JsonValue]:
        """The wire form: ``{"cluster_id", "node_id"?, "gpus"?, <extra keys>}``."""
        out: dict[str, JsonValue] = {"cluster_id": self.cluster_id}
        if self.node_id is not None:
            out["node_id"] = self.node_id
        if self.gpus is not None:
            out["gpus"] = list(self.gpus)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, JsonValue]) -> Placement:
        """A placement this process wrote with :meth:`to_json` (the hold journal's rows)."""
        node_id, gpus = data.get("node_id"), data.get("gpus")
        return cls(
            cluster_id=str(data["cluster_id"]),
            node_id=None if node_id is None else str(node_id),
            gpus=None if not isinstance(gpus, list) else tuple(str(g) for g in gpus),
            extra={k: v for k, v in data.items() if k not in _PLACEMENT_KEYS},
        )


_PLACEMENT_KEYS = frozenset(("cluster_id", "node_id", "gpus"))


def placements_json(placements: Sequence[Placement]) -> list[dict[str, JsonValue]]:
    """The wire form of several placements, in order."""
    return [p.to_json() for p in placements]


def gpu_keys_of(placements: Sequence[Placement]) -> list[GpuKey]:
    """The GPUs of placements as fleet keys, in order (used to hold them)."""
    return [key for p in placements for key in p.gpu_keys]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one candidate node could not take a request: its reasons, each with a human text,
    in :class:`Reason` order."""

    cluster_id: str
    node_id: str
    kinds: tuple[Reason, ...]
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, JsonValue]:
        """The ``NoFeasiblePlacement`` details' form (with the reason kinds)."""
        return {
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "reasons": list(self.reasons),
            "kinds": [k.value for k in self.kinds],
        }

    def explain_json(self) -> dict[str, JsonValue]:
        """The ``explain.rejected`` form (texts only)."""
        return {
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class Score:
    """A feasible node and its score (available GPUs left after placement: on the node, or in
    the chosen NVLink domain for topology)."""

    cluster_id: str
    node_id: str
    score: int

    def to_json(self) -> dict[str, JsonValue]:
        return {"cluster_id": self.cluster_id, "node_id": self.node_id, "score": self.score}


def summary_json(summary: Mapping[Reason, int]) -> dict[str, JsonValue]:
    return {k.value: n for k, n in summary.items()}


@dataclass(frozen=True)
class Placed:
    """The policy placed every request: one placement per request, in order. ``evidence`` is
    what the placement kernel recorded (None for seed-contract policies)."""

    placements: tuple[Placement, ...]
    evidence: Evidence | None = None


@dataclass(frozen=True)
class Unplaceable:
    """The policy's answer is "no". From the kernel: ``failed_request`` is the index of the
    request that found no node and ``evidence`` says why per rejected node. From a
    seed-contract policy (an empty output, or its own ``NoFeasiblePlacement``): ``message`` and
    ``details`` say why."""

    failed_request: int | None = None
    evidence: Evidence | None = None
    message: str = ""
    details: Mapping[str, JsonValue] = field(default_factory=dict)

    def error(self) -> NoFeasiblePlacement:
        """The ``NoFeasiblePlacement`` wire error (CONTRACTS §2) that says this "no"."""
        if self.evidence is not None:
            return self.evidence.no_feasible(self.failed_request or 0)
        return NoFeasiblePlacement(self.message, details=dict(self.details))


Outcome: TypeAlias = Placed | Unplaceable
"""What a policy answered: placed, or unplaceable with why. A broken policy raises instead."""


@dataclass(frozen=True)
class Decision:
    """The decision record (``explain``, a job's ``decision``): the policy, the candidates and
    the phase timings; with the kernel's findings when a built-in decided (``candidate_nodes``
    is None otherwise, and the record then has none of those keys)."""

    policy_rule_uri: str
    candidate_clusters: int
    timings_ms: Mapping[str, float]
    candidate_nodes: int | None = None
    feasible_nodes: int = 0
    rejected: tuple[Rejection, ...] = ()
    rejection_summary: Mapping[Reason, int] = field(default_factory=dict)
    top_scores: tuple[Score, ...] = ()

    @classmethod
    def of(
        cls, uri: str, candidates: int, timings_ms: Mapping[str, float], outcome: Outcome
    ) -> Decision:
        """The record of a decision over ``candidates`` clusters, with the kernel's findings
        when ``outcome`` has them."""
        evidence = outcome.evidence
        if evidence is None:
            return cls(uri, candidates, timings_ms)
        return cls(
            uri,
            candidates,
            timings_ms,
            candidate_nodes=evidence.candidate_nodes,
            feasible_nodes=evidence.feasible_nodes,
            rejected=tuple(evidence.rejections()),
            rejection_summary=evidence.summary(),
            top_scores=tuple(evidence.top_scores()),
        )

    def to_record(self) -> dict[str, JsonValue]:
        """The stored form (a job's ``decision`` column): every field, rejections with their
        reason kinds, so :meth:`from_record` gives this value back. Written out rather than
        dumped by pydantic: a placement records one, and fifty rejections cost a dump 0.1 ms."""
        return {
            "policy_rule_uri": self.policy_rule_uri,
            "candidate_clusters": self.candidate_clusters,
            "timings_ms": dict(self.timings_ms),
            "candidate_nodes": self.candidate_nodes,
            "feasible_nodes": self.feasible_nodes,
            "rejected": [r.to_json() for r in self.rejected],
            "rejection_summary": summary_json(self.rejection_summary),
            "top_scores": [t.to_json() for t in self.top_scores],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> Decision:
        """A decision stored by :meth:`to_record`. Records stored before reason kinds were
        kept (their rejections have only texts) load with no kinds."""
        rejected = record.get("rejected")
        if isinstance(rejected, list):
            rejected = [{"kinds": [], **r} if isinstance(r, dict) else r for r in rejected]
            record = {**record, "rejected": rejected}
        return _decision_adapter().validate_python(record)

    def to_json(self) -> dict[str, JsonValue]:
        """The wire form (``explain``, ``GET /jobs/{id}``'s ``decision``)."""
        out: dict[str, JsonValue] = {
            "policy_rule_uri": self.policy_rule_uri,
            "candidate_clusters": self.candidate_clusters,
            "timings_ms": dict(self.timings_ms),
        }
        if self.candidate_nodes is not None:
            out["candidate_nodes"] = self.candidate_nodes
            out["feasible_nodes"] = self.feasible_nodes
            out["rejected"] = [r.explain_json() for r in self.rejected]
            out["rejection_summary"] = summary_json(self.rejection_summary)
            out["top_scores"] = [t.to_json() for t in self.top_scores]
        return out


@cache
def _decision_adapter() -> TypeAdapter[Decision]:
    """Built on first use: the pydantic schema of :class:`Decision` (and what it holds)."""
    return TypeAdapter(Decision)
