"""Job dependencies (issue 13, item 2), in ``sbatch --dependency``'s words — pure decisions.

A job's ``config.dependency`` is a comma-separated list of terms, every one of which must hold
before it may start:

* ``after:ID[:ID…]`` — each job has started (or ended);
* ``afterok:ID[:ID…]`` — each job completed (exit 0);
* ``afternotok:ID[:ID…]`` — each job failed or was cancelled;
* ``afterany:ID[:ID…]`` — each job ended, however;
* ``singleton`` — no earlier job of the same name and user of its account is still queued,
  scheduled or running.

A term that can never hold — ``afterok`` on a job that failed, ``afternotok`` on one that
completed, ``after``/``afterok``/``afternotok`` on a job that was deleted before it could be
seen to start or end — ends the waiting job ``cancelled``, with that reason (as Slurm does with
``kill_invalid_depend``). ``afterany`` on a deleted job holds: only an ended job is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from apportion.errors import InvalidRequest
from apportion.jobs.models import FINISHED, JobStatus
from apportion.jobs.records import Job


class Kind(StrEnum):
    AFTER = "after"
    AFTER_OK = "afterok"
    AFTER_NOT_OK = "afternotok"
    AFTER_ANY = "afterany"
    SINGLETON = "singleton"


WANTS = {
    Kind.AFTER: "to start",
    Kind.AFTER_OK: "to complete successfully",
    Kind.AFTER_NOT_OK: "to fail or be cancelled",
    Kind.AFTER_ANY: "to end",
}
MAX_JOBS = 1000  # the most jobs one dependency may name


@dataclass(frozen=True)
class Term:
    """One term: its kind and the jobs it names (none for ``singleton``)."""

    kind: Kind
    job_ids: tuple[str, ...] = ()

    def text(self) -> str:
        return self.kind.value if not self.job_ids else ":".join((self.kind, *self.job_ids))


@dataclass(frozen=True)
class Waits:
    """Not yet: the words of the first term that does not hold."""

    words: str


@dataclass(frozen=True)
class Never:
    """It can never hold: why."""

    words: str


def parse(text: str, resolve: Callable[[str], str], *, path: str) -> tuple[Term, ...]:
    """The terms of ``text``; each job id given as ``resolve`` finds it (a whole id or a
    unique prefix of a job the submitter may see). :class:`InvalidRequest` naming ``path``."""
    terms: list[Term] = []
    named = 0
    for part in (p.strip() for p in text.split(",")):
        kind_text, _, ids_text = part.partition(":")
        try:
            kind = Kind(kind_text)
        except ValueError:
            raise InvalidRequest(
                f"dependency {part!r} is of no known type; use after, afterok, afternotok,"
                " afterany (each with :JOBID[:JOBID…]) or singleton, separated by commas",
                path=path,
            ) from None
        ids = ids_text.split(":") if ids_text else []
        if kind is Kind.SINGLETON and ids:
            raise InvalidRequest("dependency singleton names no job", path=path)
        if kind is not Kind.SINGLETON and (not ids or not all(ids)):
            raise InvalidRequest(
                f"dependency {part!r} names no job; write {kind}:JOBID[:JOBID…]", path=path
            )
        named += len(ids)
        if named > MAX_JOBS:
            raise InvalidRequest(f"a dependency may name at most {MAX_JOBS} jobs", path=path)
        terms.append(Term(kind, tuple(resolve(i) for i in ids)))
    return tuple(terms)


def text_of(terms: tuple[Term, ...]) -> str:
    """The normalised dependency: every job by its whole id."""
    return ",".join(term.text() for term in terms)


def state(job: Job, jobs: Mapping[str, Job]) -> Waits | Never | None:
    """Whether ``job``'s dependency holds (None), waits, or can never hold; ``jobs`` is every
    job by id."""
    text = job.config.dependency
    if not text:
        return None
    for term in parse(text, lambda given: given, path="config.dependency"):
        if term.kind is Kind.SINGLETON:
            earlier = _earlier_namesake(job, jobs)
            if earlier is not None:
                return Waits(
                    f"waits for job {earlier.job_id} of the same name and user to end"
                    f" (singleton); it is {earlier.status.value}"
                )
            continue
        for other_id in term.job_ids:
            found = _one(term.kind, other_id, jobs.get(other_id))
            if found is not None:
                return found
    return None


def _one(kind: Kind, job_id: str, other: Job | None) -> Waits | Never | None:
    wants = f"job {job_id} {WANTS[kind]} ({kind})"
    if other is None:
        if kind is Kind.AFTER_ANY:
            return None  # only an ended job is deleted
        return Never(f"dependency never satisfied: {wants}, and it was deleted")
    status = other.status
    if kind is Kind.AFTER:
        started = other.start_time is not None or status is JobStatus.RUNNING
        if started or status in FINISHED:
            return None
    elif kind is Kind.AFTER_ANY and status in FINISHED:
        return None
    elif kind is Kind.AFTER_OK and status in FINISHED:
        if status is JobStatus.COMPLETED:
            return None
        return Never(f"dependency never satisfied: waited for {wants}, and it {status.value}")
    elif kind is Kind.AFTER_NOT_OK and status in FINISHED:
        if status is not JobStatus.COMPLETED:
            return None
        return Never(f"dependency never satisfied: waited for {wants}, and it completed")
    return Waits(f"waits for {wants}; it is {status.value}")


def _earlier_namesake(job: Job, jobs: Mapping[str, Job]) -> Job | None:
    """The earliest job before ``job`` of its name, user and account that is still queued,
    scheduled or running."""
    active = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING)
    same = [
        other
        for other in jobs.values()
        if other.seq < job.seq
        and other.status in active
        and other.name == job.name
        and other.owner.account == job.owner.account
        and other.owner.user == job.owner.user
    ]
    return min(same, key=lambda other: other.seq, default=None)
