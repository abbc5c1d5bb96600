"""Quotas: each queue's nominal share of GPUs (per model), vCPUs and memory, lent and borrowed
within its cohort, as Kueue's ClusterQueues and cohorts do — pure bookkeeping.

A queue with a ``quota`` has, per resource (GPUs of one model, vCPUs, memory), a nominal amount
``N`` and optionally a borrowing limit ``B`` and a lending limit ``L``. Its *use* ``U`` is what
its scheduled and running jobs hold. Without a cohort a job may start when the queue's use
with it, ``U'``, is at most ``N``. In a cohort the members pool what they lend: a member keeps
``G = N - L`` for itself alone (``G = 0`` without a lending limit) and lends the rest, so the
pool holds ``Σ (N - G)`` and each member draws ``max(0, U - G)`` from it. A job may start when

* ``U' ≤ N + B`` (no such bound when ``B`` is unset), and
* ``Σ max(0, U - G) ≤ Σ (N - G)`` over the cohort, with ``U'`` for the job's queue.

So a queue always has its guaranteed part, what the others leave unused can be borrowed, and the
cohort never uses more than its members' quotas together. A member without a quota of the
resource takes no part in its pool (its use of it is not limited). Taking back what was lent
while a borrower runs is preemption's work (issue 10, item 4); until then a queue whose quota
was borrowed waits for the borrowers' jobs to end, and its jobs' reason says who borrows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeAlias

from apportion.jobs.models import QueueConfig, ResourceQuota, WorkerResources

GPUS, VCPUS, MEMORY_MB = "gpus", "vcpus", "memory_mb"


@dataclass(frozen=True, order=True)
class QuotaResource:
    """One resource a quota counts: GPUs of one model, vCPUs, or memory (MiB)."""

    name: str  # gpus, vcpus or memory_mb
    model: str = ""  # for GPUs: the model

    def __str__(self) -> str:
        return f"{self.model} GPU(s)" if self.name == GPUS else self.name


Usage: TypeAlias = Mapping[QuotaResource, int]
"""Amounts of quota resources (what a job holds, or asks)."""


def quota_of(queue: QueueConfig, resource: QuotaResource) -> ResourceQuota | None:
    """``queue``'s quota of ``resource``; None when it has none (not limited by a quota)."""
    quota = queue.quota
    if quota is None:
        return None
    if resource.name == GPUS:
        return quota.gpus.get(resource.model)
    return quota.vcpus if resource.name == VCPUS else quota.memory_mb


def gpu_flavors(queue: QueueConfig, resources: WorkerResources) -> list[str | None]:
    """The GPU models a job of ``queue`` asking ``resources`` per worker may be placed on and
    counted under, in the order of the queue's quota (as Kueue tries flavors): the quota's
    models that match the job's ``gpu_model`` (any, when it names none). ``[None]`` — any
    model, nothing to count — when the job asks no GPU or the queue has no GPU quota."""
    if resources.gpus == 0 or queue.quota is None or not queue.quota.gpus:
        return [None]
    asked = resources.gpu_model
    globs = [asked] if isinstance(asked, str) else asked
    return [m for m in queue.quota.gpus if globs is None or any(fnmatchcase(m, g) for g in globs)]


def job_usage(
    resources: WorkerResources, workers: int, model: str | None
) -> dict[QuotaResource, int]:
    """What a job of ``workers`` workers asking ``resources`` each counts against its queue's
    quota when its GPUs are of ``model`` (None: its GPUs count under no model)."""
    usage: dict[QuotaResource, int] = {}
    if model is not None and resources.gpus:
        usage[QuotaResource(GPUS, model)] = resources.gpus * workers
    if resources.vcpus:
        usage[QuotaResource(VCPUS)] = resources.vcpus * workers
    if resources.memory_mb:
        usage[QuotaResource(MEMORY_MB)] = resources.memory_mb * workers
    return usage


def beyond_reach(queue: QueueConfig, usage: Usage) -> str | None:
    """Why a job of ``queue`` holding ``usage`` could never start under its quotas, even with
    the queue idle (in words), or None. Its ceiling of a resource is its nominal quota, plus
    its borrowing limit in a cohort; a cohort member without a borrowing limit may borrow what
    the others lend, which changes as queues change, so it has no ceiling here."""
    for resource, amount in sorted(usage.items()):
        quota = quota_of(queue, resource)
        if quota is None:
            continue
        asks = f"the job asks for {amount} {resource} (all its workers together)"
        if queue.cohort is None and amount > quota.nominal:
            return f"{asks} and the queue's quota of them is {quota.nominal}"
        if quota.borrowing_limit is not None and amount > quota.nominal + quota.borrowing_limit:
            return (
                f"{asks} and the queue's quota of them is {quota.nominal}, with"
                f" {quota.borrowing_limit} more it may borrow"
            )
    return None


class QuotaLedger:
    """What each queue uses of its quotas during one admission cycle: built from the queues
    and charged with every active job, then with each job the cycle starts."""

    def __init__(self, queues: Mapping[str, QueueConfig]) -> None:
        self._queues = queues
        self._used: dict[str, Counter[QuotaResource]] = defaultdict(Counter)
        self._cohorts: dict[str, list[QueueConfig]] = defaultdict(list)
        for queue in queues.values():
            if queue.cohort is not None and queue.quota is not None:
                self._cohorts[queue.cohort].append(queue)

    def copy(self) -> QuotaLedger:
        """An independent copy (to try what stopping some jobs would free)."""
        twin = QuotaLedger(self._queues)
        for queue, used in self._used.items():
            twin._used[queue] = Counter(used)
        return twin

    def charge(self, queue: str, usage: Usage) -> None:
        """Count ``usage`` as held by ``queue``'s jobs (negative amounts: given back)."""
        self._used[queue].update(usage)

    def used(self, queue: str, resource: QuotaResource) -> int:
        """What ``queue``'s jobs hold of ``resource``."""
        return self._used[queue][resource]

    def refusal(self, queue: QueueConfig, usage: Usage) -> str | None:
        """Why a job of ``queue`` that would hold ``usage`` may not start now (in words), or
        None when its queue's quotas let it (see the module's docstring for the rule)."""
        for resource, amount in sorted(usage.items()):
            quota = quota_of(queue, resource)
            if quota is None or amount == 0:
                continue
            used = self.used(queue.name, resource)
            after = used + amount
            own = f"needs {amount} {resource}; queue {queue.name!r} uses {used} of its quota {quota.nominal}"
            if queue.cohort is None:
                if after > quota.nominal:
                    return own
                continue
            if quota.borrowing_limit is not None and after > quota.nominal + quota.borrowing_limit:
                return f"{own} and may borrow {quota.borrowing_limit} more (its borrowing_limit)"
            lendable, drawn = self._pool(queue.cohort, resource, queue.name, used)
            _, drawn_after = self._pool(queue.cohort, resource, queue.name, after)
            if drawn_after > lendable and drawn_after > drawn:  # it would draw what is not there
                free = max(0, lendable - drawn)
                return (
                    f"{own}, and its cohort {queue.cohort!r} has {free} of it free to lend"
                    f"{self._borrowers(queue.cohort, resource)}"
                )
        return None

    def _pool(self, cohort: str, resource: QuotaResource, queue: str, use: int) -> tuple[int, int]:
        """The cohort's pool of ``resource``: what its members lend together, and what they
        draw from it now (``queue`` using ``use``)."""
        lendable = drawn = 0
        for member in self._cohorts[cohort]:
            quota = quota_of(member, resource)
            if quota is None:
                continue
            guaranteed = _guaranteed(quota)
            lendable += quota.nominal - guaranteed
            held = use if member.name == queue else self.used(member.name, resource)
            drawn += max(0, held - guaranteed)
        return lendable, drawn

    def _borrowers(self, cohort: str, resource: QuotaResource) -> str:
        """`` (queue 'b' borrows 6)``: the members using more than their nominal quota."""
        borrowing = [
            f"queue {m.name!r} borrows {self.used(m.name, resource) - quota.nominal}"
            for m in self._cohorts[cohort]
            if (quota := quota_of(m, resource)) is not None
            and self.used(m.name, resource) > quota.nominal
        ]
        return f" ({', '.join(borrowing)})" if borrowing else ""

    def status(self, queue: QueueConfig) -> dict[str, Any] | None:
        """``queue``'s quotas and its use of them, as ``GET /queue`` shows them: per resource
        ``nominal``, ``used``, ``borrowed`` (used beyond nominal) and the limits that are set;
        GPUs by model. None for a queue without a quota."""
        quota = queue.quota
        if quota is None:
            return None

        def entry(resource: QuotaResource, limits: ResourceQuota) -> dict[str, int]:
            used = self.used(queue.name, resource)
            return {
                **limits.model_dump(),
                "used": used,
                "borrowed": max(0, used - limits.nominal),
            }

        out: dict[str, Any] = {
            GPUS: {m: entry(QuotaResource(GPUS, m), q) for m, q in quota.gpus.items()}
        }
        for name, limits in ((VCPUS, quota.vcpus), (MEMORY_MB, quota.memory_mb)):
            if limits is not None:
                out[name] = entry(QuotaResource(name), limits)
        return out


def _guaranteed(quota: ResourceQuota) -> int:
    """What a member of a cohort keeps for itself alone: its nominal less what it lends."""
    return 0 if quota.lending_limit is None else quota.nominal - quota.lending_limit


def held_usage(
    resources: WorkerResources, workers: int, gpu_models: Sequence[str | None]
) -> dict[QuotaResource, int]:
    """What an admitted job holds of quota resources: each of its GPUs under its model
    (``gpu_models``, one per GPU it holds, None where the model is not known any more) and
    its vCPUs and memory as asked."""
    usage = Counter(QuotaResource(GPUS, m) for m in gpu_models if m is not None)
    usage.update(job_usage(resources, workers, None))
    return dict(usage)
