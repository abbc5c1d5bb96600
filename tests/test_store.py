"""The store's write paths against a real SQLite file: async transactions and batches on the
writer thread, serialised by one lock, and the group committer over the batches."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, event, func, select
from sqlalchemy.dialects import mysql, postgresql

import apportion
from apportion.store.committer import GroupCommitter
from apportion.store.db import Database, normalise_url
from apportion.store.migrations import MIGRATIONS
from apportion.store.notices import CHANNEL, Notice, NoticeFeed, parse, send
from apportion.store.repos.events import EventRepo, NewEvent, write_events
from apportion.store.schema import clusters, events, pool_limits, schema_migrations
from apportion.store.upsert import upsert


@pytest.fixture
async def threaded_db(tmp_path: Path) -> AsyncIterator[Database]:
    """The store on SQLite, whose batches run on a writer thread: the committer's tests hold a
    batch there (a :class:`Gate`) while the event loop hands more over. (On PostgreSQL a batch
    runs on the event loop, where a held batch would hold the test too.)"""
    database = await Database.open(f"sqlite:///{tmp_path}/store.db")
    try:
        yield database
    finally:
        await database.close()


def insert(kind: str) -> dict[str, object]:
    return {"type": kind, "payload": "{}", "ts": 0.0}


async def count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(events))).scalar() or 0)


async def test_a_batch_commits_and_returns_its_result(db: Database) -> None:
    def write(conn: Connection) -> int:
        conn.execute(events.insert(), [insert("a"), insert("b")])
        return int(conn.execute(select(func.count()).select_from(events)).scalar() or 0)

    assert await db.write_batch(write) == 2
    assert await count(db) == 2  # visible to the async readers once it returned


async def test_a_failing_batch_is_rolled_back_and_raises(db: Database) -> None:
    def write(conn: Connection) -> None:
        conn.execute(events.insert(), [insert("a")])
        raise ValueError("half way")

    with pytest.raises(ValueError, match="half way"):
        await db.write_batch(write)
    assert await count(db) == 0


async def test_batches_and_async_writes_interleave_without_locking_errors(db: Database) -> None:
    async def batch(i: int) -> None:
        await db.write_batch(lambda conn: conn.execute(events.insert(), [insert(f"b{i}")]))

    async def plain(i: int) -> None:
        async with db.write() as conn:
            await conn.execute(events.insert().values(**insert(f"p{i}")))

    await asyncio.gather(*(f(i) for i in range(20) for f in (batch, plain)))
    assert await count(db) == 40


async def test_close_twice_is_harmless(store_url: str) -> None:
    database = await Database.open(store_url)
    await database.write_batch(lambda conn: conn.execute(events.insert(), [insert("a")]))
    await database.close()
    await database.close()
    reopened = await Database.open(store_url)
    try:
        assert await count(reopened) == 1  # committed before the close
    finally:
        await reopened.close()


# ---------------------------------------------------------------- the group committer
# The batch function below appends each change (a string) as an event of that type and returns
# the change upper-cased; a change "boom" makes its whole batch fail.


def append_types(conn: Connection, changes: Sequence[str]) -> list[str]:
    conn.execute(events.insert(), [insert(kind) for kind in changes])
    if "boom" in changes:
        raise OSError("disk full")
    return [kind.upper() for kind in changes]


async def stored_types(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(events.c.type).order_by(events.c.seq))).scalars())


class Gate:
    """A batch function that holds the writer until opened, so a test decides what is
    handed over while a commit is under way."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def __call__(self, conn: Connection, changes: Sequence[str]) -> list[str]:
        self.batches.append(list(changes))
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return append_types(conn, changes)

    async def wait_entered(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 30)
        self.entered.clear()


async def test_changes_handed_over_during_a_commit_share_the_next_one_in_order(
    threaded_db: Database,
) -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="test")
    first = asyncio.ensure_future(committer.submit(["a"]))
    await gate.wait_entered()  # "a" is being written; the next three wait for one commit
    rest = [asyncio.ensure_future(committer.submit(list(kinds))) for kinds in ("b", "cd", "e")]
    gate.release.set()
    assert await first == ["A"]
    assert [await r for r in rest] == [["B"], ["C", "D"], ["E"]]
    assert gate.batches == [["a"], ["b", "c", "d", "e"]]
    assert await stored_types(threaded_db) == ["a", "b", "c", "d", "e"]


async def test_a_failed_batch_fails_all_its_callers_writes_nothing_and_the_next_goes_on(
    threaded_db: Database,
) -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="test")
    first = asyncio.ensure_future(committer.submit(["a"]))
    await gate.wait_entered()
    doomed = [asyncio.ensure_future(committer.submit([k])) for k in ("b", "boom")]
    gate.release.set()
    await first
    results = await asyncio.gather(*doomed, return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    assert await committer.submit(["c"]) == ["C"]
    assert await stored_types(threaded_db) == ["a", "c"]  # "b" was rolled back with "boom"


async def test_a_cancelled_caller_still_has_its_change_committed(threaded_db: Database) -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="test")

    async def caller() -> list[str]:
        return await committer.submit(["a"])

    task = asyncio.create_task(caller())
    await gate.wait_entered()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.release.set()
    await committer.close()
    assert await stored_types(threaded_db) == ["a"]


async def test_close_waits_for_pending_work_then_refuses_new_changes(threaded_db: Database) -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="test")
    handed = [asyncio.ensure_future(committer.submit([k])) for k in ("a", "b")]
    await gate.wait_entered()
    closing = asyncio.create_task(committer.close())
    await asyncio.sleep(0)  # close has started waiting
    with pytest.raises(RuntimeError, match="stopping"):
        committer.submit(["late"])
    gate.release.set()
    await closing
    assert all(h.done() for h in handed)
    assert [await h for h in handed] == [["A"], ["B"]]
    assert await stored_types(threaded_db) == ["a", "b"]


async def test_two_closes_at_once_both_return_once_written(threaded_db: Database) -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="test")
    handed = asyncio.ensure_future(committer.submit(["a"]))
    await gate.wait_entered()
    closing = [asyncio.create_task(committer.close()) for _ in range(2)]
    await asyncio.sleep(0)  # both wait
    gate.release.set()
    await asyncio.wait_for(asyncio.gather(*closing), 30)
    assert await handed == ["A"]


async def test_a_burst_is_cut_into_batches_of_at_most_max_batch_changes(
    threaded_db: Database,
) -> None:
    gate = Gate()
    gate.release.set()
    committer: GroupCommitter[str, str] = GroupCommitter(
        threaded_db, gate, name="test", max_batch=3
    )
    # one hand-over is never split, so 2 + 2 > 3 makes two batches
    results = await asyncio.gather(
        *(committer.submit(list(kinds)) for kinds in ("ab", "cd", "e", "f", "ghij"))
    )
    assert results == [["A", "B"], ["C", "D"], ["E"], ["F"], ["G", "H", "I", "J"]]
    assert gate.batches == [["a", "b"], ["c", "d", "e"], ["f"], ["g", "h", "i", "j"]]


async def test_a_cancelled_flusher_fails_everything_it_had_not_committed(
    threaded_db: Database,
) -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="test")
    handed = [asyncio.ensure_future(committer.submit([k])) for k in ("a", "b")]
    await gate.wait_entered()
    later = asyncio.ensure_future(committer.submit(["c"]))
    flusher = committer._line.flusher
    assert flusher is not None
    flusher.cancel()
    results = await asyncio.gather(*handed, later, return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError] * 3
    gate.release.set()  # let the writer thread finish before the database closes


async def test_after_commit_runs_before_the_callers_resume(db: Database) -> None:
    seen: list[tuple[list[str], list[str]]] = []

    async def after(changes: Sequence[str], results: Sequence[str]) -> None:
        seen.append((list(changes), list(results)))

    committer: GroupCommitter[str, str] = GroupCommitter(
        db, append_types, name="test", after_commit=after
    )
    assert await committer.submit(["a"]) == ["A"]
    assert seen == [(["a"], ["A"])]


# The committers of one database share one line: what they are handed is written in the order
# of the calls, several committers' changes in one transaction.


def lowered(conn: Connection, changes: Sequence[str]) -> list[str]:
    """A second family's batch function: the change as an event of its lower-cased type,
    answered lower-cased; "BOOM" fails its batch."""
    if "BOOM" in changes:
        raise OSError("disk full")
    conn.execute(events.insert(), [insert(kind.lower()) for kind in changes])
    return [kind.lower() for kind in changes]


async def test_two_committers_changes_share_one_commit_and_the_order_of_their_calls(
    threaded_db: Database,
) -> None:
    gate = Gate()
    jobs: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="jobs")
    announced: list[list[str]] = []

    async def announce(changes: Sequence[str], _results: Sequence[str]) -> None:
        announced.append(list(changes))  # only once what it announces is committed
        assert await stored_types(threaded_db) == ["a", "b", "c", "x", "y"]

    news: GroupCommitter[str, str] = GroupCommitter(
        threaded_db, lowered, name="news", after_commit=announce
    )
    first = asyncio.ensure_future(jobs.submit(["a"]))
    await gate.wait_entered()  # "a" is being written
    # "b" waits for the jobs' next commit; "X", handed over after it, is not written before it
    later = [
        asyncio.ensure_future(jobs.submit(["b"])),
        asyncio.ensure_future(news.submit(["X"])),
        asyncio.ensure_future(jobs.submit(["c"])),
        asyncio.ensure_future(news.submit(["Y"])),
    ]
    gate.release.set()
    assert await first == ["A"]
    assert [await r for r in later] == [["B"], ["x"], ["C"], ["y"]]
    assert gate.batches == [["a"], ["b", "c"]]  # the second commit held "X" and "Y" too
    assert announced == [["X", "Y"]]


async def test_an_announcers_after_commit_runs_after_the_other_committers(db: Database) -> None:
    heard: list[str] = []

    def hook(name: str) -> Callable[[Sequence[str], Sequence[str]], Awaitable[None]]:
        async def after(changes: Sequence[str], _results: Sequence[str]) -> None:
            heard.append(f"{name}: {', '.join(changes)}")

        return after

    news: GroupCommitter[str, str] = GroupCommitter(
        db, lowered, name="news", after_commit=hook("news"), announcer=True
    )
    jobs: GroupCommitter[str, str] = GroupCommitter(
        db, append_types, name="jobs", after_commit=hook("jobs")
    )
    # one turn's hand-overs, one commit: the news handed over first is heard of last
    await asyncio.gather(news.submit(["X"]), jobs.submit(["a"]))
    assert heard == ["jobs: a", "news: X"]
    assert await stored_types(db) == ["x", "a"]


async def test_the_next_batch_is_written_while_the_one_before_is_announced(
    db: Database,
) -> None:
    announcing = asyncio.Event()
    go_on = asyncio.Event()
    heard: list[list[str]] = []

    async def slow_announcer(changes: Sequence[str], _results: Sequence[str]) -> None:
        announcing.set()
        await go_on.wait()
        heard.append(list(changes))

    news: GroupCommitter[str, str] = GroupCommitter(
        db, append_types, name="news", after_commit=slow_announcer
    )
    first = asyncio.ensure_future(news.submit(["a"]))
    await announcing.wait()  # "a" is committed; its announcement waits
    second = asyncio.ensure_future(news.submit(["b"]))
    for _ in range(200):
        if await stored_types(db) == ["a", "b"]:
            break
        await asyncio.sleep(0.01)
    assert await stored_types(db) == ["a", "b"]  # written meanwhile
    assert not first.done() and not second.done() and heard == []
    go_on.set()
    assert (await first, await second) == (["A"], ["B"])
    assert heard == [["a"], ["b"]]  # announced in the order of the batches


async def test_one_committers_failure_fails_the_whole_commit_of_every_committer(
    threaded_db: Database,
) -> None:
    gate = Gate()
    jobs: GroupCommitter[str, str] = GroupCommitter(threaded_db, gate, name="jobs")
    news: GroupCommitter[str, str] = GroupCommitter(threaded_db, lowered, name="news")
    first = asyncio.ensure_future(jobs.submit(["a"]))
    await gate.wait_entered()
    doomed = [
        asyncio.ensure_future(jobs.submit(["b"])),
        asyncio.ensure_future(news.submit(["BOOM"])),
    ]
    gate.release.set()
    await first
    results = await asyncio.gather(*doomed, return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    assert await news.submit(["C"]) == ["c"]
    assert await stored_types(threaded_db) == ["a", "c"]  # "b" was rolled back with "BOOM"


async def test_a_committer_whose_turn_fails_loses_only_its_own_changes(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def no_turn() -> AsyncIterator[None]:
        raise ConnectionError("the turn's connection is gone")
        yield

    jobs: GroupCommitter[str, str] = GroupCommitter(db, append_types, name="jobs")
    news: GroupCommitter[str, str] = GroupCommitter(db, lowered, name="news", around=no_turn)
    results = await asyncio.gather(
        jobs.submit(["a"]), news.submit(["X"]), jobs.submit(["b"]), return_exceptions=True
    )
    assert [type(r) for r in results] == [list, ConnectionError, list]
    assert await stored_types(db) == ["a", "b"]
    written: list[str] = []
    monkeypatch.setattr(db, "write_batch", lambda fn: written.append("a transaction"))
    with pytest.raises(ConnectionError):  # alone in its batch: no empty transaction either
        await news.submit(["Y"])
    assert written == []


# ---------------------------------------------------------------- the one upsert


async def test_upsert_inserts_then_replaces_only_the_update_columns(db: Database) -> None:
    def put(document: str, now: float) -> Any:
        return upsert(
            db.engine.dialect,
            clusters,
            {"id": "c1", "document": document, "created_at": now, "updated_at": now},
            key=["id"],
            update=["document", "updated_at"],
        )

    async with db.write() as conn:
        await conn.execute(put("{}", 1.0))
    async with db.write() as conn:
        await conn.execute(put('{"v":2}', 2.0))
    async with db.read() as conn:
        rows = (await conn.execute(select(clusters))).all()
    assert [(r.document, r.created_at, r.updated_at) for r in rows] == [('{"v":2}', 1.0, 2.0)]


def test_upsert_speaks_each_dialect_and_refuses_others() -> None:
    values = {"name": "max_concurrent_jobs", "value": "4"}
    statement = upsert(postgresql.dialect(), pool_limits, values, key=["name"], update=["value"])
    sql = str(statement.compile(dialect=postgresql.dialect()))
    assert "ON CONFLICT (name) DO UPDATE SET value = excluded.value" in sql
    with pytest.raises(ValueError, match="mysql"):
        upsert(mysql.dialect(), pool_limits, values, key=["name"], update=["value"])


# ---------------------------------------------------------------- pruning the event log


async def test_pruning_deletes_in_chunks_of_their_own_transaction(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = EventRepo(db)
    await db.write_batch(lambda conn: write_events(conn, [NewEvent("x", "{}", 0.0, None)] * 10))
    deletes: list[int] = []
    write = db.write

    @asynccontextmanager
    async def counting() -> AsyncIterator[Any]:
        async with write() as conn:
            deletes.append(1)
            yield conn

    monkeypatch.setattr(db, "write", counting)
    # keep 2 of seqs 1..10: 8 go, at most 3 a transaction: 1-3, 4-6, 7-8, then one that finds
    # nothing older than the cut
    assert await repo.prune(keep=2, chunk=3) == 8
    assert len(deletes) == 4
    assert [e.seq for e in await repo.since(0, limit=100)] == [9, 10]


async def test_pruning_by_age_cuts_at_the_first_young_event_and_keeps_the_newest(
    db: Database,
) -> None:
    repo = EventRepo(db)
    batch = [NewEvent("x", "{}", ts, None) for ts in (1.0, 2.0, 3.0, 4.0)]
    await db.write_batch(lambda conn: write_events(conn, batch))
    assert await repo.prune(keep=100, older_than=2.5) == 2  # ts 1 and 2 go
    assert [e.ts for e in await repo.since(0, limit=100)] == [3.0, 4.0]
    assert await repo.prune(keep=100, older_than=99.0) == 1  # all old: the newest stays
    assert [e.seq for e in await repo.since(0, limit=100)] == [4]


def test_no_module_outside_the_store_speaks_sql() -> None:
    package = Path(apportion.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if "store" not in path.relative_to(package).parts[:1]
        and re.search(r"^\s*(from|import) sqlalchemy\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


# ---------------------------------------------------------------- the database URL and dialects


@pytest.mark.parametrize(
    ("given", "driver_url"),
    [
        ("sqlite:///tmp/a.db", "sqlite+aiosqlite:///tmp/a.db"),
        ("sqlite+aiosqlite:///tmp/a.db", "sqlite+aiosqlite:///tmp/a.db"),
        ("postgresql://u:p@127.0.0.1:5432/db", "postgresql+asyncpg://u:p@127.0.0.1:5432/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_urls_name_their_async_driver(given: str, driver_url: str) -> None:
    assert normalise_url(given) == driver_url


@pytest.mark.parametrize("url", ["mysql://u:secret@h/db", "postgresql+psycopg2://u@h/db", "db"])
def test_other_database_urls_are_refused_naming_the_two_forms_and_no_secret(url: str) -> None:
    with pytest.raises(
        ValueError, match=r"use sqlite:///path/to/apportion\.db or postgresql://"
    ) as e:
        normalise_url(url)
    assert "secret" not in str(e.value)


async def test_a_batch_whose_caller_is_cancelled_is_still_committed(db: Database) -> None:
    caller = asyncio.ensure_future(
        db.write_batch(lambda conn: conn.execute(events.insert(), [insert("a")]))
    )
    await asyncio.sleep(0)  # the batch has started
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(200):
        if await count(db) == 1:
            break
        await asyncio.sleep(0.01)
    assert await count(db) == 1


async def test_replicas_opening_one_postgresql_database_together_migrate_it_once(
    postgres_db: str,
) -> None:
    opened = await asyncio.gather(*(Database.open(postgres_db) for _ in range(3)))
    try:
        async with opened[0].read() as conn:
            versions = (await conn.execute(select(schema_migrations.c.version))).scalars().all()
        assert sorted(versions) == [m.version for m in MIGRATIONS]
        assert {d.dialect for d in opened} == {"postgresql"}
    finally:
        for database in opened:
            await database.close()


# ---------------------------------------------------------------- notices between servers


async def test_notices_reach_every_listener_in_commit_order_and_never_from_a_rollback(
    postgres_db: str,
) -> None:
    db = await Database.open(postgres_db)
    heard: list[Notice] = []
    resyncs: list[int] = []

    async def handle(notice: Notice) -> None:
        heard.append(notice)

    async def resync() -> None:
        resyncs.append(1)

    feed = NoticeFeed(db)
    feed.on("t", handle, resync)
    await feed.start()
    try:
        assert resyncs == [1]  # once listening, before any notice
        many = [f"{i:032x}" for i in range(500)]  # 16.5 kB of ids: sent as three notices
        await db.write_batch(lambda conn: send(conn, "t", "insert", many))

        def rolled_back(conn: Connection) -> None:
            send(conn, "t", "delete", ["never"])
            raise ValueError("rolled back")

        with pytest.raises(ValueError, match="rolled back"):
            await db.write_batch(rolled_back)
        await db.write_batch(lambda conn: send(conn, "t", "delete", ["last"]))
        await db.write_batch(lambda conn: send(conn, "other", "x", ["unheard"]))
        for _ in range(500):
            if heard and heard[-1].verb == "delete":
                break
            await asyncio.sleep(0.01)
        assert [n.verb for n in heard] == ["insert"] * 3 + ["delete"]
        assert [w for n in heard[:3] for w in n.words] == many
        assert heard[-1].words == ("last",)
    finally:
        await feed.close()
        await db.close()


async def test_a_feed_closes_while_notices_keep_arriving(postgres_db: str) -> None:
    # before, the feed waited for its next notice with asyncio.wait_for, which on Python 3.11
    # swallows a cancellation arriving as a notice does: close() then waited for ever, and so
    # did the stop of a server hearing a notice at that moment (a leader's own step-down)
    db = await Database.open(postgres_db)
    sender = await asyncpg.connect(db.asyncpg_dsn())

    async def handle(_notice: Notice) -> None:
        pass

    async def resync() -> None:
        pass

    async def keep_sending() -> None:
        while True:
            await sender.execute("SELECT pg_notify($1, 't x 1')", CHANNEL)
            await asyncio.sleep(0)

    sending = asyncio.create_task(keep_sending())
    try:
        for attempt in range(200):
            feed = NoticeFeed(db)
            feed.on("t", handle, resync)
            await feed.start()
            await asyncio.sleep(0.0001 * (attempt % 20))
            async with asyncio.timeout(10):  # a deadline for the bug, not a timing assertion
                await feed.close()
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        await sender.close()
        await db.close()


async def test_no_notice_is_sent_on_sqlite(threaded_db: Database) -> None:
    statements: list[str] = []

    def sending(conn: Connection) -> None:
        event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        send(conn, "t", "insert", ["a"])

    await threaded_db.write_batch(sending)
    assert statements == []
    assert parse("hold renew a b") == Notice("hold", "renew", ("a", "b"))
    assert parse("nonsense") is None
