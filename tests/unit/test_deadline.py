"""``bridge._support.deadline.Deadline``: a timeout that cancels again until the body gives up."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge._support.deadline import Deadline


async def test_a_body_within_the_deadline_is_untouched() -> None:
    async with Deadline(1.0, "quick") as deadline:
        await asyncio.sleep(0.01)
    assert not deadline.expired


async def test_a_slow_body_is_cancelled_and_raises_timeout_naming_what() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"outbox claim: no answer within 0\.1s"):
        async with Deadline(0.1, "outbox claim"):
            await asyncio.sleep(10)
    assert time.monotonic() - started < 1.0


async def test_a_body_that_absorbs_one_cancellation_is_cancelled_again() -> None:
    # What asyncpg does on a dead connection: the cancelled call waits on, unbounded.
    absorbed = 0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with Deadline(0.1, "stubborn", repeat=0.1):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                absorbed += 1
                await asyncio.sleep(10)  # waits again: only a second cancel ends this
    assert absorbed == 1
    assert time.monotonic() - started < 1.0


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def body() -> None:
        async with Deadline(5.0, "outer"):
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_none_and_disarm_bound_nothing() -> None:
    async with Deadline(None, "unbounded") as deadline:
        await asyncio.sleep(0.05)
    assert not deadline.expired
    async with Deadline(0.05, "disarmed") as deadline:
        deadline.disarm()
        await asyncio.sleep(0.15)
    assert not deadline.expired
