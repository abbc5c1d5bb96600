"""Quotas and cohorts, the pure bookkeeping (jobs/quota.py; issue 10, item 2).

Table tests of one decision each, with the arithmetic in a comment; hypothesis properties over
random workloads: a queue never uses more than its nominal quota plus what it may borrow, a
cohort never more than its members lend together, and a queue within its guaranteed part is
never kept waiting by what the others borrowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.jobs.models import QueueConfig, WorkerResources, parse_model
from apportion.jobs.quota import (
    GPUS,
    QuotaLedger,
    QuotaResource,
    beyond_reach,
    gpu_flavors,
    job_usage,
)

H100 = QuotaResource(GPUS, "H100")


def queue(name: str, cohort: str | None = None, **gpus: dict[str, int]) -> QueueConfig:
    body: dict[str, Any] = {"name": name, "quota": {"gpus": gpus}}
    if cohort is not None:
        body["cohort"] = cohort
    return parse_model(QueueConfig, body)


def ledger(*queues: QueueConfig, **used: int) -> QuotaLedger:
    """A ledger of ``queues`` whose H100 use is ``used`` (by queue name)."""
    book = QuotaLedger({q.name: q for q in queues})
    for name, amount in used.items():
        book.charge(name, {H100: amount})
    return book


@dataclass
class Row:
    comment: str
    queues: tuple[QueueConfig, ...]
    used: dict[str, int]
    asks: int  # H100 GPUs, for the first queue
    refused: str | None  # words the refusal holds; None: it may start


ROWS = [
    Row(
        "alone: 2 used + 2 asked = 4 ≤ nominal 4",
        (queue("a", H100={"nominal": 4}),),
        {"a": 2},
        2,
        None,
    ),
    Row(
        "alone: 3 + 2 = 5 > nominal 4",
        (queue("a", H100={"nominal": 4}),),
        {"a": 3},
        2,
        "needs 2 H100 GPU(s); queue 'a' uses 3 of its quota 4",
    ),
    Row(
        "cohort: a borrows from b's unused 4: a 4 + 2 = 6; pool 4 + 4 = 8, drawn 6 ≤ 8",
        (queue("a", "lab", H100={"nominal": 4}), queue("b", "lab", H100={"nominal": 4})),
        {"a": 4},
        2,
        None,
    ),
    Row(
        "cohort: b borrowed 2 of a's 4; a 2 + 1 = 3 would draw 3 + 6 = 9 > pool 4 + 4 = 8",
        (queue("a", "lab", H100={"nominal": 4}), queue("b", "lab", H100={"nominal": 4})),
        {"a": 2, "b": 6},
        1,
        "its cohort 'lab' has 0 of it free to lend (queue 'b' borrows 2)",
    ),
    Row(
        "borrowing limit: a 4 + 3 = 7 > nominal 4 + borrowing_limit 2, though b lends 4",
        (
            queue("a", "lab", H100={"nominal": 4, "borrowing_limit": 2}),
            queue("b", "lab", H100={"nominal": 4}),
        ),
        {"a": 4},
        3,
        "may borrow 2 more (its borrowing_limit)",
    ),
    Row(
        "lending limit: b lends 1 of its 4 (keeps 3): a 4 + 2 = 6, drawn 6 > pool 4 + 1 = 5",
        (
            queue("a", "lab", H100={"nominal": 4}),
            queue("b", "lab", H100={"nominal": 4, "lending_limit": 1}),
        ),
        {"a": 4},
        2,
        "has 1 of it free to lend",
    ),
    Row(
        "guaranteed: a keeps 3 of 4 (lending_limit 1); b borrowed all else: a 0 + 3 = 3 ≤ 3",
        (
            queue("a", "lab", H100={"nominal": 4, "lending_limit": 1}),
            queue("b", "lab", H100={"nominal": 4}),
        ),
        {"b": 5},  # b's 4 and a's 1 lent: the pool of 5 is drawn whole
        3,
        None,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.comment for r in ROWS])
def test_a_quota_decision(row: Row) -> None:
    book = ledger(*row.queues, **row.used)
    words = book.refusal(row.queues[0], {H100: row.asks})
    if row.refused is None:
        assert words is None, words
    else:
        assert words is not None and row.refused in words, words


def test_a_refusal_names_who_borrows() -> None:
    a, b = queue("a", "lab", H100={"nominal": 4}), queue("b", "lab", H100={"nominal": 4})
    words = ledger(a, b, b=8).refusal(a, {H100: 1})  # b uses its 4 and a's 4
    assert words is not None and "(queue 'b' borrows 4)" in words, words


def test_the_status_shows_use_against_nominal_and_borrowed() -> None:
    a = queue("a", "lab", H100={"nominal": 4, "borrowing_limit": 4}, A100={"nominal": 2})
    b = queue("b", "lab", H100={"nominal": 4})
    status = ledger(a, b, a=6).status(a)
    assert status == {
        "gpus": {
            "H100": {"nominal": 4, "borrowing_limit": 4, "used": 6, "borrowed": 2},
            "A100": {"nominal": 2, "used": 0, "borrowed": 0},
        }
    }


@pytest.mark.parametrize(
    ("gpu_model", "flavors"),
    [
        (None, ["H100", "A100"]),  # any model: the quota's order
        ("A100*", ["A100"]),
        (["H*", "A100"], ["H100", "A100"]),
        ("L40S", []),  # not in the quota: never
    ],
)
def test_a_job_tries_the_quotas_models_in_order(gpu_model: Any, flavors: list[str]) -> None:
    q = queue("a", H100={"nominal": 8}, A100={"nominal": 8})
    resources = WorkerResources(gpus=1, gpu_model=gpu_model)
    assert gpu_flavors(q, resources) == flavors


def test_a_job_without_gpus_or_a_queue_without_gpu_quota_counts_no_model() -> None:
    assert gpu_flavors(queue("a", H100={"nominal": 8}), WorkerResources(gpus=0)) == [None]
    bare = parse_model(QueueConfig, {"name": "bare"})
    assert gpu_flavors(bare, WorkerResources(gpus=4)) == [None]


def test_beyond_reach() -> None:
    alone = queue("a", H100={"nominal": 4})
    assert beyond_reach(alone, {H100: 4}) is None
    words = beyond_reach(alone, {H100: 5})
    assert words is not None and "quota of them is 4" in words
    # in a cohort, without a borrowing limit: no ceiling (the others may lend)
    assert beyond_reach(queue("a", "lab", H100={"nominal": 4}), {H100: 100}) is None
    capped = queue("a", "lab", H100={"nominal": 4, "borrowing_limit": 2})
    assert beyond_reach(capped, {H100: 6}) is None
    assert beyond_reach(capped, {H100: 7}) is not None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"cohort": "lab"}, "cohort 'lab' needs a quota"),
        ({"quota": {"gpus": {"H100": {"nominal": 4, "borrowing_limit": 2}}}}, "in no cohort"),
        ({"quota": {"gpus": {"H100*": {"nominal": 4}}}}, "without wildcards"),
        (
            {"quota": {"gpus": {"H100": {"nominal": 4, "lending_limit": 5}}}, "cohort": "c"},
            "lending_limit 5 is more than nominal 4",
        ),
        ({"quota": {"gpus": {"H100": {"nominal": -1}}}}, "greater than or equal to 0"),
        ({"quota": {"gpu": {}}}, "gpu"),
    ],
)
def test_a_quota_that_means_nothing_is_refused(body: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_model(QueueConfig, {"name": "q", **body})
    assert words in refused.value.message, refused.value.message


# ---------------------------------------------------------------------------- properties

NOMINALS = st.integers(0, 8)
LIMITS = st.one_of(st.none(), st.integers(0, 8))


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[QueueConfig, ...]:
    """Two to four queues of one cohort, each with an H100 quota and maybe limits."""
    queues = []
    for index in range(draw(st.integers(2, 4))):
        nominal = draw(NOMINALS)
        quota: dict[str, int] = {"nominal": nominal}
        borrowing, lending = draw(LIMITS), draw(LIMITS)
        if borrowing is not None:
            quota["borrowing_limit"] = borrowing
        if lending is not None:
            quota["lending_limit"] = min(lending, nominal)
        queues.append(queue(f"q{index}", "lab", H100=quota))
    return tuple(queues)


# each step: a job of queue i asking n GPUs arrives, or the running job j ends
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 3), st.integers(1, 6)),
        st.tuples(st.just("end"), st.integers(0, 50), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(cohorts(), STEPS)
def test_no_queue_or_cohort_uses_more_than_its_quota(
    queues: tuple[QueueConfig, ...], steps: list[tuple[str, int, int]]
) -> None:
    running: list[tuple[str, int]] = []  # (queue, GPUs) of each running job
    for kind, which, asks in steps:
        if kind == "end":
            if running:
                running.pop(which % len(running))
            continue
        q = queues[which % len(queues)]
        book = ledger(*queues)  # each cycle counts the running jobs afresh
        for name, gpus in running:
            book.charge(name, {H100: gpus})
        used = book.used(q.name, H100)
        quota = q.quota.gpus["H100"] if q.quota else None
        assert quota is not None
        guaranteed = 0 if quota.lending_limit is None else quota.nominal - quota.lending_limit
        refusal = book.refusal(q, {H100: asks})
        if used + asks <= guaranteed:
            # its own part: never kept waiting by what the others borrowed
            assert refusal is None, refusal
        if refusal is None:
            running.append((q.name, asks))
        # the invariants, over what now runs
        book = ledger(*queues)
        for name, gpus in running:
            book.charge(name, {H100: gpus})
        lendable = drawn = 0
        for member in queues:
            mine = member.quota.gpus["H100"] if member.quota else None
            assert mine is not None
            use = book.used(member.name, H100)
            if mine.borrowing_limit is not None:
                assert use <= mine.nominal + mine.borrowing_limit
            kept = 0 if mine.lending_limit is None else mine.nominal - mine.lending_limit
            lendable += mine.nominal - kept
            drawn += max(0, use - kept)
        assert drawn <= lendable


@settings(max_examples=200, deadline=None)
@given(NOMINALS, st.lists(st.integers(1, 6), max_size=30))
def test_a_queue_alone_never_passes_its_nominal(nominal: int, asks: list[int]) -> None:
    alone = queue("a", H100={"nominal": nominal})
    book = ledger(alone)
    for amount in asks:
        if book.refusal(alone, {H100: amount}) is None:
            book.charge("a", {H100: amount})
        assert book.used("a", H100) <= nominal


def test_job_usage_counts_all_workers() -> None:
    resources = WorkerResources(gpus=2, vcpus=8, memory_mb=1024)
    assert job_usage(resources, 3, "H100") == {
        H100: 6,
        QuotaResource("vcpus"): 24,
        QuotaResource("memory_mb"): 3072,
    }
    assert QuotaResource(GPUS, "H100") not in job_usage(resources, 3, None)
