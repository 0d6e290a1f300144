"""A service's background work (relay, consumer, timers) is started again whenever it stops while the service runs."""

from __future__ import annotations

import asyncio

import pytest

from shared.runtime import keep_running


class FlakyWork:
    """Fails, then ends from a stray CancelledError, then returns once the service is stopping."""

    def __init__(self) -> None:
        self.runs = 0
        self.stopping = False

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("relay crashed")
        if self.runs == 2:
            raise asyncio.CancelledError()  # not the task's own cancellation
        if self.runs == 3:
            return  # ended on its own while the service runs
        self.stopping = True


async def test_work_that_fails_ends_or_is_cancelled_from_within_is_started_again_until_shutdown() -> None:
    work = FlakyWork()
    await keep_running(work, "relay", stopping=lambda: work.stopping, first_delay=0.0)
    assert work.runs == 4


async def test_the_services_own_cancellation_ends_the_work() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(keep_running(forever, "consumer", stopping=lambda: False, first_delay=0.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
