"""The internal policy interface, and the seed contract as one adapter over it.

:class:`PlacementPolicy` is what the allocation service calls to place requests: a fleet
snapshot, the candidate cluster ids, the parsed requests and the GPUs that are unavailable in,
an :data:`~apportion.engine.decisions.Outcome` out — placed, or unplaceable with why. The
built-ins (:mod:`apportion.policies.builtins`) implement it; engine state travels only in its
arguments, never in a user's ``settings``.

The seed-004 class contract (``__init__(rule_id, settings, parameters)``, ``eval(parameters,
input_data, context)``, ``management(action, data)``) is adapted to the same outcome for
uploaded and ``--policy-dir`` policies: :meth:`PolicyRuntime.evaluate
<apportion.policies.runtime.PolicyRuntime.evaluate>` runs ``eval`` (in a thread or a sandbox
worker) and :func:`seed_outcome` turns its output into an outcome. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any, Protocol

from apportion.engine.decisions import Outcome, Placed, Unplaceable
from apportion.engine.requests import GpuRequest, gang_items
from apportion.engine.validate import validate_output
from apportion.errors import NoFeasiblePlacement
from apportion.registry.fleet import FleetView
from apportion.registry.fleet_structure import GpuKey


class PlacementPolicy(Protocol):
    """A policy that places requests on the fleet (the built-ins).

    ``place`` is called by the allocation service, on the event loop, for allocations and for
    jobs (a job's workers are one gang). It must be pure and bounded (it reads ``fleet`` under
    ``fleet.lock`` and never changes it), return one placement per request in order, or
    :class:`~apportion.engine.decisions.Unplaceable` when nothing fits; raising is reserved for
    a broken policy (answered ``PolicyError`` naming it)."""

    @property
    def name(self) -> str:
        """The policy's name, e.g. ``binpack``."""
        ...

    def place(
        self,
        fleet: FleetView,
        candidates: Sequence[str],
        requests: Sequence[GpuRequest],
        unavailable: Set[GpuKey],
    ) -> Outcome: ...


def seed_outcome(
    output: Any,
    *,
    policy_uri: str,
    inputs: Any,
    candidates: Sequence[str],
    fleet: FleetView,
    require_free: bool,
) -> Outcome:
    """The outcome of a seed-contract policy's ``eval`` output (CONTRACTS §3).

    An empty output (``None``, ``{}``, ``[]``) is the policy's "no"; anything else must validate
    (:func:`~apportion.engine.validate.validate_output`: a list of one placement per request
    for the gang form of ``inputs``) or :class:`~apportion.errors.InvalidPolicyOutput` is
    raised — a broken policy is an error, never a rejection."""
    if output in (None, {}, []):
        return Unplaceable(
            message=f"policy {policy_uri} found no placement among {len(candidates)} "
            "candidate cluster(s)",
            details={"policy_rule_uri": policy_uri, "candidates": len(candidates)},
        )
    items = gang_items(inputs)
    placements = validate_output(
        output,
        expected=None if items is None else len(items),
        is_gang=items is not None,
        candidates=set(candidates),
        fleet=fleet,
        require_free=require_free,
        policy_uri=policy_uri,
    )
    return Placed(placements)


def refused(exc: NoFeasiblePlacement) -> Unplaceable:
    """A seed-contract policy's own ``NoFeasiblePlacement`` as its "no" (the seed convention
    of saying no by raising; the wire error stays the policy's)."""
    return Unplaceable(message=exc.message, details=exc.details)
