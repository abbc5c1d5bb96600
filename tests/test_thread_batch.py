"""ThreadBatch: the blocking calls of one turn of the event loop share one worker thread, and each
caller still gets its own result or its own exception."""

from __future__ import annotations

import asyncio
import threading

import pytest

from apportion.thread_batch import SETTLE_EVERY, ThreadBatch


async def test_calls_of_one_turn_run_in_one_thread_in_order() -> None:
    seen: list[tuple[int, int]] = []  # (argument, thread)

    def square(n: int) -> int:
        seen.append((n, threading.get_ident()))
        return n * n

    batch = ThreadBatch(square)
    assert await asyncio.gather(*(batch(n) for n in range(50))) == [n * n for n in range(50)]
    assert [n for n, _ in seen] == list(range(50))
    assert len({thread for _, thread in seen}) == 1
    assert seen[0][1] != threading.get_ident()  # off the event loop's thread


async def test_each_caller_gets_its_own_exception() -> None:
    def checked(n: int) -> int:
        if n % 2:
            raise ValueError(f"{n} is odd")
        return n

    batch = ThreadBatch(checked)
    outcomes = await asyncio.gather(*(batch(n) for n in range(4)), return_exceptions=True)
    assert outcomes[0] == 0 and outcomes[2] == 2
    assert [str(o) for o in outcomes[1::2]] == ["1 is odd", "3 is odd"]


async def test_later_turns_make_new_batches() -> None:
    threads: list[int] = []
    batch = ThreadBatch(lambda n: threads.append(threading.get_ident()) or n)
    assert await batch(1) == 1
    assert await batch(2) == 2  # a call after the first batch settled is run too
    assert len(threads) == 2


async def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    release = threading.Event()

    def slow(n: int) -> int:
        release.wait(10)
        return n

    batch = ThreadBatch(slow)
    first, second = asyncio.ensure_future(batch(1)), asyncio.ensure_future(batch(2))
    await asyncio.sleep(0)  # both handed over in this turn
    first.cancel()
    release.set()
    assert await second == 2
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_early_results_come_back_while_the_rest_of_the_batch_runs() -> None:
    """A thousand dispatches in one batch: the first go on before the last are prepared."""
    release = threading.Event()
    last = SETTLE_EVERY + 5

    def gated(n: int) -> int:
        if n == last:
            release.wait(30)
        return n

    batch = ThreadBatch(gated)
    calls = [asyncio.ensure_future(batch(n)) for n in range(last + 1)]
    try:
        async with asyncio.timeout(10):  # a deadline for a broken test, not a timing assertion
            assert await calls[0] == 0  # while call ``last`` still waits in the thread
        assert not calls[last].done()
    finally:
        release.set()
    assert await asyncio.gather(*calls) == list(range(last + 1))
