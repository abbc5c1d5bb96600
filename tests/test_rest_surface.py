"""The REST surface's one source of truth: statuses from the error classes."""

from __future__ import annotations

from typing import Any

import pytest

from apportion import errors
from apportion.errors import ApportionError, ErrorCode
from tests.conftest import Running, allocation

# every class that defines a wire code (InvalidDocument keeps InvalidRequest's code)
CODE_CLASSES = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type)
    and issubclass(cls, ApportionError)
    and cls is not ApportionError
    and "code" in cls.__dict__
]


def test_every_code_has_one_class_and_its_status() -> None:
    assert sorted(cls.code for cls in CODE_CLASSES) == sorted(ErrorCode)
    for cls in CODE_CLASSES:
        assert errors.http_status_of(cls.code.value) == cls.http_status
    assert errors.http_status_of("NoSuchCode") == 500


@pytest.mark.parametrize("cls", CODE_CLASSES, ids=lambda cls: cls.__name__)
async def test_post_allocate_answers_the_status_of_the_error_class(
    running: Running, monkeypatch: pytest.MonkeyPatch, cls: type[ApportionError]
) -> None:
    # the old second table in routes_core had no NotFound: it answered 500
    async def refuse(*_: Any) -> dict[str, Any]:
        raise cls("refused by the test")

    context = running.server.context
    assert context is not None
    monkeypatch.setattr(context.allocations, "allocate", refuse)
    async with running.http.post(f"{running.url}/allocate", json=allocation()) as response:
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (cls.http_status, cls.code.value)
