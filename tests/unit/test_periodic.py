"""Periodic: steps on schedule, errors reported without stopping it, bounded stop."""

from __future__ import annotations

import asyncio

from bridge._support.periodic import Periodic


async def test_steps_repeat_and_a_failing_step_does_not_stop_the_schedule() -> None:
    calls: list[int] = []
    errors: list[Exception] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("boom")

    periodic = Periodic(step, 0.01, name="t", on_error=errors.append)
    await periodic.start()
    await periodic.start()  # idempotent: still one task
    async with asyncio.timeout(5):
        while len(calls) < 4:
            await asyncio.sleep(0.01)
    await periodic.stop(1.0)
    assert not periodic.running
    assert [str(e) for e in errors] == ["boom"]
    done = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == done  # nothing runs after stop


async def test_stop_cancels_a_step_that_outlasts_the_timeout() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def step() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    periodic = Periodic(step, 0.0, name="t", on_error=lambda exc: None)
    await periodic.start()
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(periodic.stop(0.05), 5)
    assert cancelled.is_set() and not periodic.running


async def test_the_first_step_waits_one_interval() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)

    periodic = Periodic(step, 30.0, name="t", on_error=lambda exc: None)
    await periodic.start()
    await asyncio.sleep(0.05)
    await periodic.stop(1.0)
    assert calls == []
