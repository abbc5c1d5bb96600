"""Fair share: what each account has used, decayed with a half-life, against its shares
(Slurm's classic fair-share factor, ``sshare``).

Usage is counted in GPU-seconds and CPU-seconds from a job's start to its end (its GPUs as held,
its vCPUs as asked, one per worker when it asked none). Older usage counts less: a GPU-second
``a`` seconds ago weighs ``2^(-a/H)``, ``H`` the half-life. So a job that ran ``g`` GPUs from
``s`` to ``e`` weighs, at time ``t``,

    ∫ₛᵉ g · 2^(-(t-τ)/H) dτ = g · H/ln 2 · (2^(-(t-e)/H) − 2^(-(t-s)/H)).

The usage of ended jobs is kept per account, decayed to the time it was last charged
(:class:`Decayed`; the ``account_usage`` table, written with the job's end in one transaction),
so deleting a job forgets none of it; running jobs are added as they run. An account's *fair
share factor* is ``2^(-U/S)``: ``U`` its share of all accounts' usage (the billing: GPU-seconds
plus ``cpu_seconds_weight`` × CPU-seconds), ``S`` its share of all shares. An account that used
exactly its share gets 0.5, one that used nothing 1.0, one that used much more tends to 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # records owns a UsageBook
    from apportion.jobs.records import Job

LN2 = math.log(2)


def decay_factor(age: float, half_life: float) -> float:
    """How much usage ``age`` seconds old weighs now (1 for none, 0.5 at one half-life)."""
    return math.pow(2.0, -max(age, 0.0) / half_life)


def decayed_run(amount: float, start: float, end: float, now: float, half_life: float) -> float:
    """``amount`` (GPUs, CPUs) used from ``start`` to ``end``, as weighed at ``now`` (the
    integral in the module's docstring)."""
    if end <= start:
        return 0.0
    return (
        amount
        * half_life
        / LN2
        * (decay_factor(now - end, half_life) - decay_factor(now - start, half_life))
    )


@dataclass(frozen=True)
class Decayed:
    """An account's usage by ended jobs, decayed to ``as_of`` (an ``account_usage`` row)."""

    account: str
    gpu_seconds: float
    cpu_seconds: float
    as_of: float

    def at(self, now: float, half_life: float) -> Decayed:
        """The same usage decayed further, to ``now``."""
        factor = decay_factor(now - self.as_of, half_life)
        return Decayed(self.account, self.gpu_seconds * factor, self.cpu_seconds * factor, now)


def job_gpus(job: Job) -> int:
    """The GPUs a job holds: those of its placements, else what its workers asked for."""
    if job.allocation is not None:
        return sum(len(p.gpus or ()) for p in job.allocation)
    return job.config.resources.gpus * job.workers


def job_cpus(job: Job) -> int:
    """The vCPUs a job is counted for: what its workers asked, one per worker otherwise."""
    return (job.config.resources.vcpus or 1) * job.workers


class UsageBook:
    """Each account's decayed usage: the ended jobs' (kept and stored) and the running
    jobs' (computed when asked). Owned by :class:`~apportion.jobs.records.JobBook`, which
    charges a job's run when it records its end."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self._ended: dict[str, Decayed] = {}
        self._amounts: dict[str, tuple[int, int]] = {}  # running job → its GPUs and vCPUs

    def load(self, rows: Iterable[Decayed]) -> None:
        """The stored usage (once, at start)."""
        self._ended = {row.account: row for row in rows}

    def charge(self, job: Job, end: float) -> Decayed | None:
        """Add the run of ``job``, ended at ``end``, to its account's usage; return the
        account's new row to store with the end (None for a job that never started)."""
        self._amounts.pop(job.job_id, None)
        start = job.start_time
        if start is None:
            return None
        account = job.owner.account
        before = self._ended.get(account, Decayed(account, 0.0, 0.0, end)).at(end, self.half_life)
        row = Decayed(
            account,
            before.gpu_seconds + decayed_run(job_gpus(job), start, end, end, self.half_life),
            before.cpu_seconds + decayed_run(job_cpus(job), start, end, end, self.half_life),
            end,
        )
        self._ended[account] = row
        return row

    def usage(self, now: float, running: Iterable[Job]) -> dict[str, Decayed]:
        """Every account's usage as weighed at ``now``: its ended jobs' and what its
        ``running`` jobs have used so far."""
        out = {name: row.at(now, self.half_life) for name, row in self._ended.items()}
        started = [job for job in running if job.start_time is not None]
        if not started:
            return out
        # each job's run so far weighs amount × H/ln 2 × (1 − 2^(−(now − start)/H)): the
        # integral of the module's docstring with end = now, for all of them at once
        starts = np.fromiter((j.start_time or now for j in started), np.float64, len(started))
        weight = (
            self.half_life / LN2 * (1.0 - np.exp2(-np.maximum(now - starts, 0.0) / self.half_life))
        )
        amounts = np.array([self._amounts_of(j) for j in started], dtype=np.float64)
        names, which = np.unique([j.owner.account for j in started], return_inverse=True)
        gpus = np.bincount(which, weights=amounts[:, 0] * weight, minlength=len(names))
        cpus = np.bincount(which, weights=amounts[:, 1] * weight, minlength=len(names))
        for account, gpu_seconds, cpu_seconds in zip(
            names.tolist(), gpus.tolist(), cpus.tolist(), strict=True
        ):
            row = out.get(account, Decayed(account, 0.0, 0.0, now))
            out[account] = Decayed(
                account, row.gpu_seconds + gpu_seconds, row.cpu_seconds + cpu_seconds, now
            )
        return out

    def _amounts_of(self, job: Job) -> tuple[int, int]:
        """A running job's GPUs and vCPUs (they do not change while it runs: kept until its
        run is charged)."""
        known = self._amounts.get(job.job_id)
        if known is None:
            known = self._amounts[job.job_id] = (job_gpus(job), job_cpus(job))
        return known


@dataclass(frozen=True)
class AccountShare:
    """One account's line of ``apportion share`` (Slurm's ``sshare``)."""

    account: str
    raw_shares: int
    norm_shares: float  # its shares / all shares
    gpu_seconds: float  # decayed
    cpu_seconds: float  # decayed
    effective_usage: float  # its billing / all billing
    fair_share: float  # 2^(-effective_usage / norm_shares)

    def public(self) -> dict[str, object]:
        """The line as ``GET /share`` answers it."""
        return {
            "account": self.account,
            "raw_shares": self.raw_shares,
            "norm_shares": round(self.norm_shares, 6),
            "gpu_seconds": round(self.gpu_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "effective_usage": round(self.effective_usage, 6),
            "fair_share": round(self.fair_share, 6),
        }


def account_shares(
    shares: Mapping[str, int], usage: Mapping[str, Decayed], *, cpu_seconds_weight: float
) -> dict[str, AccountShare]:
    """Every account's fair share (the module's docstring): ``shares`` by account, ``usage``
    as :meth:`UsageBook.usage` weighs it."""
    total_shares = sum(shares.values()) or 1

    def billing(row: Decayed | None) -> float:
        return 0.0 if row is None else row.gpu_seconds + cpu_seconds_weight * row.cpu_seconds

    total_usage = sum(billing(usage.get(name)) for name in shares)
    out: dict[str, AccountShare] = {}
    for name, raw in shares.items():
        row = usage.get(name)
        norm = raw / total_shares
        effective = billing(row) / total_usage if total_usage > 0 else 0.0
        factor = math.pow(2.0, -effective / norm) if norm > 0 else 0.0
        out[name] = AccountShare(
            name,
            raw,
            norm,
            0.0 if row is None else row.gpu_seconds,
            0.0 if row is None else row.cpu_seconds,
            effective,
            factor,
        )
    return out
