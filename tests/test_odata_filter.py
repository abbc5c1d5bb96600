"""``filter_exp`` (seed 000's OData ``$filter`` subset): what it takes, what it refuses, and
that it agrees with a plain Python evaluation over random expressions (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.server.odata_filter import compile_filter

JOBS: list[dict[str, Any]] = [
    {"id": 1, "name": "mesh", "status": "running", "replica_count": 4, "parent_job_id": None},
    {"id": 2, "name": "solve", "status": "pending", "replica_count": 1, "parent_job_id": 1},
    {"id": 3, "name": "post's", "status": "failed", "replica_count": 2, "parent_job_id": 1},
    {"id": 4, "name": "solve", "status": "succeeded", "replica_count": 8, "parent_job_id": 2},
]
FIELDS = {"id", "name", "status", "replica_count", "parent_job_id"}


def ids(expression: str) -> list[int]:
    matches = compile_filter(expression, FIELDS)
    return [job["id"] for job in JOBS if matches(job)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("status eq 'running'", [1]),
        ("status ne 'running'", [2, 3, 4]),
        ("replica_count gt 2", [1, 4]),
        ("replica_count ge 2 and replica_count le 4", [1, 3]),
        ("replica_count lt 2 or status eq 'failed'", [2, 3]),
        ("name eq 'solve' and (status eq 'pending' or status eq 'succeeded')", [2, 4]),
        ("name eq 'post''s'", [3]),  # '' is a quote
        ("parent_job_id eq null", [1]),
        ("parent_job_id ne null", [2, 3, 4]),
        ("parent_job_id gt 0", [2, 3, 4]),  # null is not ordered
        ("status eq 1", []),  # text is never equal to a number
        ("status eq 'running' or status eq 'pending' and replica_count gt 1", [1]),  # and first
        ("  (  (id eq 4) )  ", [4]),
    ],
)
def test_expressions_select_what_odata_says(expression: str, expected: list[int]) -> None:
    assert ids(expression) == expected


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("contains(name, 'so')", "'contains' is not supported"),
        ("not status eq 'running'", "'not' is not supported"),
        ("owner eq 'bob'", "no field 'owner'; the fields are id, name, parent_job_id"),
        ("status is 'running'", "'is' after 'status' is no comparison"),
        ("status eq running", "a literal ('text', a number, true, false or null) was expected"),
        ("status eq 'running' and", "a field name was expected, not the end"),
        ("(status eq 'running'", "a ')' is missing"),
        ("status eq 'running')", "')' at character 20 is not understood"),
        ("replica_count add 1 eq 2", "'add' after 'replica_count' is no comparison"),
        ("status in ('a', 'b')", "'in' after 'status' is no comparison"),
        ("", "empty"),
        ("(" * 40 + "id eq 1" + ")" * 40, "nested parentheses"),
        (" or ".join(["id eq 1"] * 101), "more than 100 comparisons"),
    ],
)
def test_what_it_does_not_take_is_refused_naming_it(expression: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        compile_filter(expression, FIELDS)
    assert refused.value.path == "query.filter_exp"
    assert words in refused.value.message


def comparisons() -> st.SearchStrategy[tuple[str, Any]]:
    """A comparison as text, with the same comparison as a Python function."""
    ops = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return st.tuples(st.sampled_from(sorted(ops)), st.integers(0, 9)).map(
        lambda pair: (
            f"replica_count {pair[0]} {pair[1]}",
            lambda job, op=ops[pair[0]], n=pair[1]: eval(f"{job['replica_count']} {op} {n}"),
        )
    )


def expressions(depth: int = 3) -> st.SearchStrategy[tuple[str, Any]]:
    if depth == 0:
        return comparisons()
    smaller = expressions(depth - 1)
    joined = st.tuples(smaller, st.sampled_from(["and", "or"]), smaller).map(
        lambda t: (
            f"({t[0][0]}) {t[1]} ({t[2][0]})",
            (lambda job, a=t[0][1], b=t[2][1]: a(job) and b(job))
            if t[1] == "and"
            else (lambda job, a=t[0][1], b=t[2][1]: a(job) or b(job)),
        )
    )
    return st.one_of(comparisons(), joined)


@settings(max_examples=300, deadline=None)
@given(expressions(), st.lists(st.integers(0, 9), min_size=1, max_size=6))
def test_random_expressions_agree_with_python(case: tuple[str, Any], counts: list[int]) -> None:
    text, expected = case
    matches = compile_filter(text, FIELDS)
    for count in counts:
        job = {"replica_count": count}
        assert matches(job) == expected(job), (text, count)
