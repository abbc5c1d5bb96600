"""JobBook's writes through the group-committing JobWriter, against a real SQLite file and a
real PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection

from apportion.engine.decisions import Decision, Placement, Reason, Rejection, Score
from apportion.jobs.fairshare import UsageBook
from apportion.jobs.models import JobConfig, JobStatus
from apportion.jobs.priority import WEEK
from apportion.jobs.records import JobBook
from apportion.ownership import Owner
from apportion.server.events import EventLog
from apportion.store.db import Database
from apportion.store.repos.holds import HoldChange, HoldRepo, HoldRow
from apportion.store.repos.holds import write_changes as write_hold_changes

T = TypeVar("T")
OWNER = Owner("team-a", "alice", "k1")


def config(name: str) -> JobConfig:
    return JobConfig(name=name, command=["/bin/true"])


def count_commits(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets one item per transaction ``db`` writes from now on."""
    commits: list[int] = []
    write_batch = db.write_batch

    async def counting(fn: Callable[[Connection], T]) -> T:
        commits.append(1)
        return await write_batch(fn)

    monkeypatch.setattr(db, "write_batch", counting)
    return commits


async def test_concurrent_saves_share_one_commit_and_keep_their_order(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    a = await book.create(config("a"), 0, OWNER, "submitted")
    b = await book.create(config("b"), 0, OWNER, "submitted")
    commits = count_commits(db, monkeypatch)
    # five changes handed over before the writer runs: one transaction
    await asyncio.gather(
        book.save(a, status=JobStatus.SCHEDULED, reason="placed"),
        book.save(b, status=JobStatus.SCHEDULED, reason="placed"),
        book.save(a, status=JobStatus.RUNNING, reason="started"),
        book.save(b, status=JobStatus.CANCELLED, reason="cancelled"),
        book.save(a, status=JobStatus.COMPLETED, reason="exit 0"),
    )
    assert commits == [1]
    fresh = JobBook(db, usage=UsageBook(WEEK))
    await fresh.load()
    # the newest row of each job won; the history kept the order of the changes
    assert (fresh.get(a.job_id).status, fresh.get(b.job_id).status) == (
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
    )
    history = [e["status"] for e in await fresh.history(a.job_id)]
    assert history == ["queued", "scheduled", "running", "completed"]
    assert [e["reason"] for e in await fresh.history(b.job_id)] == [
        "submitted",
        "placed",
        "cancelled",
    ]


async def test_a_failed_commit_reaches_every_caller_of_its_batch(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")

    async def broken(fn: Callable[[Connection], T]) -> T:
        raise OSError("disk full")

    monkeypatch.setattr(db, "write_batch", broken)
    results = await asyncio.gather(
        book.save(job, status=JobStatus.SCHEDULED), book.save(job), return_exceptions=True
    )
    assert [type(r) for r in results] == [OSError, OSError]
    monkeypatch.undo()
    await book.save(job, status=JobStatus.RUNNING)  # the writer recovers for the next change
    assert [e["status"] for e in await book.history(job.job_id)] == ["queued", "running"]


async def test_a_new_job_and_its_event_are_one_commit_and_it_is_in_the_book_when_heard(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the lifecycle's submit: the job and its job_queued event, handed over in one turn
    book = JobBook(db, usage=UsageBook(WEEK))
    events = EventLog(db)
    known_when_heard: list[bool] = []

    async def listener(event: dict[str, Any]) -> None:
        known_when_heard.append(event["job_id"] in book.jobs)

    events.add_sink(listener)
    commits = count_commits(db, monkeypatch)
    job = book.new(config("a"), 0, OWNER)
    entered = book.enter(job, "submitted")
    assert job.job_id not in book.jobs  # not before its commit
    heard = events.append("job_queued", {"job_id": job.job_id}, account=OWNER.account)
    await asyncio.gather(entered, heard)
    assert commits == [1] and known_when_heard == [True]
    assert [e["type"] for e in await events.since(0)] == ["job_queued"]
    assert book.unfinished[job.job_id] is job


async def test_a_job_whose_commit_failed_is_not_in_the_book(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))

    async def failing(fn: Callable[[Connection], T]) -> T:
        raise OSError("disk full")

    monkeypatch.setattr(db, "write_batch", failing)
    job = book.new(config("a"), 0, OWNER)
    with pytest.raises(OSError, match="disk full"):
        await book.enter(job, "submitted")
    assert job.job_id not in book.jobs and not book._entering


async def test_a_cancelled_caller_still_has_its_change_written(db: Database) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")

    async def caller() -> None:
        await book.save(job, status=JobStatus.SCHEDULED, reason="placed")

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)  # handed over
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await book.close()
    assert [e["status"] for e in await book.history(job.job_id)] == ["queued", "scheduled"]


async def test_the_history_includes_a_change_still_being_committed(db: Database) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")
    saving = book.save(job, status=JobStatus.RUNNING, reason="started")
    # handed over when called: the record already says running, the store not yet
    assert job.status is JobStatus.RUNNING
    assert [e["status"] for e in await book.history(job.job_id)] == ["queued", "running"]
    await saving


async def test_a_replaced_decision_is_encoded_anew(db: Database) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")
    job.decision = Decision("binpack:1.0-stable", 1, {}, candidate_nodes=4, feasible_nodes=3)
    first = job.row().decision
    assert first is not None and '"feasible_nodes":3' in first
    assert job.row().decision is first  # kept while the same object is set
    job.decision = Decision("spread:1.0-stable", 1, {}, candidate_nodes=4, feasible_nodes=1)
    assert '"spread:1.0-stable"' in (job.row().decision or "")


async def test_a_job_s_placements_and_decision_come_back_from_the_store_as_they_were(
    db: Database,
) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")
    job.allocation = (Placement("c1", "n0", ("0", "1")), Placement("c1", "n1", ("3",)))
    job.decision = Decision(
        "binpack:1.0-stable",
        2,
        {"evaluate": 0.25},
        candidate_nodes=3,
        feasible_nodes=2,
        rejected=(Rejection("c2", "m0", (Reason.GPU_MODEL,), ("no GPU of model H100",)),),
        rejection_summary={Reason.GPU_MODEL: 1},
        top_scores=(Score("c1", "n0", 2),),
    )
    await book.save(job, status=JobStatus.SCHEDULED, reason="placed")
    await book.close()
    reread = JobBook(db, usage=UsageBook(WEEK))
    await reread.load()
    again = reread.get(job.job_id)
    assert again.allocation == job.allocation
    assert again.decision == job.decision  # reason kinds included, not only their texts
    assert again.public()["decision"] == job.decision.to_json()
    assert again.owner == OWNER  # whose it is, too


async def test_the_history_waits_for_the_change_of_a_cancelled_caller(db: Database) -> None:
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")
    saving = book.save(job, status=JobStatus.RUNNING, reason="started")  # handed over
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving
    # the change is still pending or committed: either way the history includes it
    assert [e["status"] for e in await book.history(job.job_id)] == ["queued", "running"]


async def test_a_jobs_end_and_the_release_of_its_hold_are_one_transaction(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before, the end and the release were two commits of two writers: a crash between them
    # left the hold for 10 years (issue 21, item 11)
    book = JobBook(db, usage=UsageBook(WEEK))
    job = await book.create(config("a"), 0, OWNER, "submitted")
    await db.write_batch(
        lambda conn: write_hold_changes(
            conn,
            [
                HoldChange(
                    "insert",
                    "h1",
                    HoldRow(
                        "h1",
                        "k1",
                        job.job_id,
                        "binpack:1.0-stable",
                        "[]",
                        0.0,
                        9e9,
                        "job",
                        "team-a",
                        "alice",
                    ),
                    gpus=(("c1", "n0", "0"),),
                )
            ],
        )
    )
    commits: list[Callable[[Connection], Any]] = []
    write_batch = db.write_batch

    async def counting(fn: Callable[[Connection], T]) -> T:
        commits.append(fn)
        return await write_batch(fn)

    monkeypatch.setattr(db, "write_batch", counting)
    await book.save(job, status=JobStatus.COMPLETED, reason="exit 0", release_hold="h1")
    assert len(commits) == 1  # the end and the release: one transaction
    assert await HoldRepo(db).all() == []
    fresh = JobBook(db, usage=UsageBook(WEEK))
    await fresh.load()
    assert fresh.get(job.job_id).status is JobStatus.COMPLETED
