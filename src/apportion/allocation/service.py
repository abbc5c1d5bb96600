"""Answering allocation requests: candidates → policy → outcome → validated placements → hold.

``AllocationService`` is what the WebSocket and ``POST /allocate`` call (through
``server/dispatch.py``, which renders its typed answer as JSON), and what the job service calls
to place a job. It never blocks the event loop for long (built-ins are bounded vectorised work
run inline; other policies run on a worker thread or in a sandbox process) and it numbers and
times its phases for the decision record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apportion.allocation.candidates import CandidateFinder
from apportion.allocation.hold import Hold
from apportion.allocation.holds import HoldManager
from apportion.allocation.messages import AllocationRequest
from apportion.engine.decisions import (
    Decision,
    JsonValue,
    Outcome,
    Placed,
    Placement,
    Unplaceable,
    placements_json,
)
from apportion.engine.requests import gang_items, parse_inputs
from apportion.engine.validate import validate_placements
from apportion.errors import (
    ApportionError,
    Conflict,
    HeldElsewhere,
    InvalidRequest,
    NoFeasiblePlacement,
)
from apportion.event_sink import EventSink
from apportion.ownership import Actor, Owner
from apportion.policies.inputs import LazyClusterData
from apportion.policies.protocol import refused, seed_outcome
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.store import PolicyEntry, PolicyStore
from apportion.policies.uri import PolicyURI
from apportion.registry.service import Registry

JOB_LEASE_SECONDS = 10 * 365 * 86400.0  # a job's hold lasts until the job ends and releases it
RESERVE_ATTEMPTS = 3  # decisions of one request whose GPUs were held meanwhile, before Conflict

Observer = Callable[[str, str, float], None]
"""``observe(policy_uri, outcome, seconds)`` after every allocation decision."""


@dataclass
class Phases:
    """Wall time per phase of one decision; rounded only when read (``explain``)."""

    _seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self._seconds[name] = self._seconds.get(name, 0.0) + (now - self._last)
        self._last = now

    @property
    def timings(self) -> dict[str, float]:
        """Phase → milliseconds, to the microsecond."""
        return {name: round(seconds * 1000, 3) for name, seconds in self._seconds.items()}


@dataclass(frozen=True)
class Allocated:
    """A successful allocation: one placement per request, whether the inputs were a gang (the
    wire ``data`` is then a list), the hold when the request held, and the decision record
    when it asked for ``explain``."""

    placements: tuple[Placement, ...]
    is_gang: bool
    hold: Hold | None = None
    decision: Decision | None = None

    def data_json(self) -> JsonValue:
        """The answer's ``data``: the placements as the policy's output shape."""
        data = placements_json(self.placements)
        return data if self.is_gang else data[0]

    def to_json(self) -> dict[str, JsonValue]:
        """The success envelope (CONTRACTS §2), without ``request_id``."""
        body: dict[str, JsonValue] = {"success": True, "data": self.data_json()}
        if self.hold is not None:
            body["allocation_id"] = self.hold.allocation_id
            body["expires_at"] = self.hold.expires_at
        if self.decision is not None:
            body["explain"] = self.decision.to_json()
        return body


class AllocationService:
    """The allocation use case, shared by every edge."""

    def __init__(
        self,
        registry: Registry,
        policies: PolicyStore,
        runtime: PolicyRuntime,
        holds: HoldManager,
        *,
        default_lease_seconds: float,
        max_lease_seconds: float,
        observe: Observer | None = None,
        emit: EventSink | None = None,
    ) -> None:
        self._registry = registry
        self._policies = policies
        self._runtime = runtime
        self._holds = holds
        self.default_lease_seconds = default_lease_seconds
        self.max_lease_seconds = max_lease_seconds
        self._candidates = CandidateFinder(registry, policies, runtime)
        self._observe = observe
        self._emit = emit

    def lease(self, seconds: float | None, *, path: str = "lease_seconds") -> float:
        value = self.default_lease_seconds if seconds is None else seconds
        if value > self.max_lease_seconds:
            raise InvalidRequest(
                f"{path} {value:g} is over the limit of {self.max_lease_seconds:g} s; "
                "renew the allocation instead of asking for a longer lease",
                path=path,
            )
        return value

    # ---------------------------------------------------------------- allocate
    async def allocate(self, request: AllocationRequest, actor: Actor) -> Allocated:
        """Answer one request (the edge renders it with :meth:`Allocated.to_json`); raise on
        failure — ``NoFeasiblePlacement`` rendered from the policy's "no", once. Every outcome
        is reported to the observer (the server's Prometheus metrics)."""
        started = time.perf_counter()
        outcome = "success"
        try:
            return await self._allocate(request, actor)
        except ApportionError as exc:
            outcome = exc.code.value
            raise
        finally:
            if self._observe is not None:
                self._observe(request.policy_rule_uri, outcome, time.perf_counter() - started)

    async def _allocate(self, request: AllocationRequest, actor: Actor) -> Allocated:
        """:meth:`allocate` without the bookkeeping.

        A request that holds (``adhoc: false``) decides over the fleet as it is, then reserves
        the placement with :meth:`_reserve_decided` (see there: no lock is held while a policy
        runs, and two holds never get the same GPU); the durable commit follows, batched with
        other holds. A commit the database refuses (:class:`HeldElsewhere`: a server sharing
        it won those GPUs) is another attempt, over the fleet as it is then.
        """
        phases = Phases()
        entry = self._policies.get(str(PolicyURI.parse(request.policy_rule_uri)))
        lease = None if request.adhoc else self.lease(request.lease_seconds)
        candidates = await self._candidates.for_request(request)
        phases.mark("candidates")
        hold = None
        placed: Placed | None = None
        for attempt in range(1, RESERVE_ATTEMPTS + 1):
            outcome, is_gang = await self._decide(
                entry,
                request.inputs,
                request.parameters,
                request.settings,
                candidates,
                phases,
                require_free=lease is not None,
            )
            if isinstance(outcome, Unplaceable):
                raise outcome.error()
            placed = outcome
            if lease is None:
                break
            hold = self._reserve_decided(
                placed,
                attempt,
                lease_seconds=lease,
                owner=actor.owner,
                request_id=request.request_id,
                policy_uri=entry.uri,
            )
            if hold is None:
                continue
            try:
                await self._holds.commit(hold)
            except HeldElsewhere:  # another server sharing the database won those GPUs
                if attempt >= RESERVE_ATTEMPTS:
                    raise
                hold = None
                continue
            phases.mark("hold")
            break
        assert placed is not None  # a refusal raised; the last attempt reserved or raised
        decision = None
        if request.explain:
            decision = Decision.of(entry.uri, len(candidates), phases.timings, placed)
        answer = Allocated(placed.placements, is_gang, hold, decision)
        if hold is not None and self._emit is not None:  # adhoc answers change nothing
            await self._emit(
                "allocation_decided",
                {
                    "request_id": request.request_id,
                    "policy_rule_uri": entry.uri,
                    "data": answer.data_json(),
                    "allocation_id": hold.allocation_id,
                },
                account=actor.account,
            )
        return answer

    def _reserve_decided(
        self,
        outcome: Placed,
        attempt: int,
        *,
        lease_seconds: float,
        owner: Owner | None,
        request_id: str | None,
        policy_uri: str,
        kind: str = "allocation",
    ) -> Hold | None:
        """Reserve a placement decided over an earlier view of the fleet; None when one of its
        GPUs was held meanwhile and ``attempt`` may be retried (decide again over the fleet as
        it is now), :class:`Conflict` on the last attempt.

        Why no lock: a built-in decides without an ``await`` (the decision and this reserve run
        in one step of the event loop, so nothing can come in between), and a sandboxed policy
        must not hold every other hold and job placement while it runs. :meth:`HoldManager.reserve`
        checks and marks the GPUs synchronously, so of two decisions that chose one GPU, the
        second to reserve finds it held."""
        try:
            return self._holds.reserve(
                outcome.placements,
                lease_seconds=lease_seconds,
                owner=owner,
                request_id=request_id,
                policy_uri=policy_uri,
                kind=kind,
            )
        except Conflict:
            if attempt >= RESERVE_ATTEMPTS:
                raise
            return None

    async def _decide(
        self,
        entry: PolicyEntry,
        inputs: dict[str, Any],
        parameters: dict[str, Any],
        settings: dict[str, Any],
        candidates: list[str],
        phases: Phases,
        *,
        require_free: bool,
    ) -> tuple[Outcome, bool]:
        """The policy's outcome over the candidates, its placements validated, and whether the
        inputs were a gang (the answer is then a list).

        A built-in gets the parsed requests and the fleet view through the internal protocol
        (``settings`` and ``parameters`` reach no engine state); a seed-contract policy gets
        ``input_data`` (CONTRACTS §3) and its output is made an outcome by the adapter
        (:func:`~apportion.policies.protocol.seed_outcome`)."""
        fleet = self._registry.fleet
        outcome: Outcome
        if entry.placer is not None:
            requests, is_gang = parse_inputs(inputs)
            outcome = self._runtime.place(entry, fleet, candidates, requests)
            phases.mark("evaluate")
            if isinstance(outcome, Placed):
                validate_placements(
                    outcome.placements,
                    candidates=set(candidates),
                    fleet=fleet,
                    require_free=require_free,
                    policy_uri=entry.uri,
                )
            phases.mark("validate")
            return outcome, is_gang
        is_gang = gang_items(inputs) is not None
        cluster_data = LazyClusterData(self._registry, candidates)
        try:
            evaluation = await self._runtime.evaluate(
                entry,
                input_data={"cluster_data": cluster_data, "inputs": inputs},
                json_input={"cluster_data": cluster_data.materialise(), "inputs": inputs}
                if entry.sandboxed
                else None,
                parameters=parameters,
                settings=settings,
            )
        except NoFeasiblePlacement as exc:
            return refused(exc), is_gang
        phases.mark("evaluate")
        outcome = seed_outcome(
            evaluation.output,
            policy_uri=entry.uri,
            inputs=inputs,
            candidates=candidates,
            fleet=fleet,
            require_free=require_free,
        )
        phases.mark("validate")
        return outcome, is_gang

    async def reserve_for_job(
        self,
        *,
        policy_uri: str,
        candidates: list[str],
        inputs: dict[str, Any],
        parameters: dict[str, Any],
        owner: Owner | None,
        job_id: str,
    ) -> tuple[Hold, Decision] | Unplaceable:
        """Place a job's workers as one gang, in one cluster, and reserve their GPUs (in memory:
        no other decision can take them); return the hold and the decision record (as
        ``explain`` gives it), or the "no". Follow with :meth:`commit_hold` to make the hold
        durable. A broken or unknown policy raises (``PolicyError``, ``UnknownPolicy``…).

        The policy sees every candidate. A "no" over all of them is final (no subset does
        better); an answer that spans several clusters (a job runs under one scheduler) is
        retried with each candidate cluster alone, in id order, skipping those that say no."""
        placed = await self._place_job(
            policy_uri, candidates, inputs, parameters, reserve_as=(owner, job_id)
        )
        if isinstance(placed, Unplaceable):
            return placed
        _, decision, hold = placed
        assert hold is not None  # reserve_as was given
        return hold, decision

    async def plan_for_job(
        self,
        *,
        policy_uri: str,
        candidates: list[str],
        inputs: dict[str, Any],
        parameters: dict[str, Any],
    ) -> tuple[Placed, Decision] | Unplaceable:
        """Where :meth:`reserve_for_job` would place the job now, over the free GPUs, without
        reserving anything (a dry run): the placement and its decision record, or the "no"."""
        placed = await self._place_job(policy_uri, candidates, inputs, parameters, reserve_as=None)
        if isinstance(placed, Unplaceable):
            return placed
        outcome, decision, _ = placed
        return outcome, decision

    async def _place_job(
        self,
        policy_uri: str,
        candidates: list[str],
        inputs: dict[str, Any],
        parameters: dict[str, Any],
        *,
        reserve_as: tuple[Owner | None, str] | None,
    ) -> tuple[Placed, Decision, Hold | None] | Unplaceable:
        """The decisions of :meth:`reserve_for_job` (see there); with ``reserve_as`` (the
        owner and job id of the hold) the placement is reserved, without it only decided."""
        entry = self._policies.get(str(PolicyURI.parse(policy_uri, path="policy_rule_uri")))
        attempts = [candidates] + [[c] for c in sorted(candidates)]
        for index, attempt in enumerate(attempts):
            for tries in range(1, RESERVE_ATTEMPTS + 1):  # again when raced (_reserve_decided)
                phases = Phases()
                outcome, _ = await self._decide(
                    entry, inputs, parameters, {}, attempt, phases, require_free=True
                )
                if isinstance(outcome, Unplaceable):
                    if index == 0:
                        return outcome
                    break
                if len({p.cluster_id for p in outcome.placements}) > 1:
                    break
                decision = Decision.of(entry.uri, len(attempt), phases.timings, outcome)
                if reserve_as is None:
                    return outcome, decision, None
                owner, job_id = reserve_as
                hold = self._reserve_decided(
                    outcome,
                    tries,
                    lease_seconds=JOB_LEASE_SECONDS,
                    owner=owner,
                    request_id=job_id,
                    policy_uri=entry.uri,
                    kind="job",
                )
                if hold is not None:
                    return outcome, decision, hold
        return Unplaceable(
            message="no single cluster can take every worker of the job",
            details={"candidates": len(candidates)},
        )

    async def commit_hold(self, hold: Hold) -> None:
        """Make a reserved hold durable (group-committed with others); on failure the
        reservation is undone and the error raised."""
        await self._holds.commit(hold)

    # ---------------------------------------------------------------- holds
    async def release(self, allocation_id: str, actor: Actor) -> dict[str, Any]:
        hold = await self._holds.release(allocation_id, actor=actor)
        if self._emit is not None:
            await self._emit(
                "allocation_released",
                {"allocation_id": allocation_id, "reason": "released"},
                account=None if hold.owner is None else hold.owner.account,
            )
        return {"success": True, "data": {"allocation_id": hold.allocation_id, "released": True}}

    async def renew(
        self, allocation_id: str, lease_seconds: float | None, actor: Actor
    ) -> dict[str, Any]:
        lease = self.lease(lease_seconds)
        hold = await self._holds.renew(allocation_id, lease, actor=actor)
        return {
            "success": True,
            "data": {"allocation_id": hold.allocation_id, "expires_at": hold.expires_at},
        }

    async def management(self, uri: str, action: str, data: dict[str, Any]) -> dict[str, Any]:
        entry = self._policies.get(str(PolicyURI.parse(uri)))
        result = await self._runtime.management(entry, action, data)
        return {"success": True, "data": result}
