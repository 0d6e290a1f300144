"""A service's background work (relay, consumer, timers) is started again whenever it stops while the service runs."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.runtime import keep_running, sweep_every
from tests.support.polling import eventually


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


class Sweep:
    """Finds work twice, then nothing, then fails (an outage), then finds work once more."""

    def __init__(self) -> None:
        self.answers: list[int | Exception] = [2, 1, 0, RuntimeError("database down"), 1, 0]
        self.calls = 0

    async def __call__(self) -> int:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_a_sweep_runs_again_at_once_while_it_finds_work_then_waits_for_the_next_period() -> None:
    sweep = Sweep()
    sweeping = asyncio.create_task(sweep_every(sweep, every_seconds=3600, what="apply held outcomes"))
    try:
        await eventually(lambda: _true(sweep.calls == 3), timeout=5, message="found 2, then 1, then nothing")
        assert not sweeping.done()
    finally:
        await _cancel(sweeping)


async def test_a_sweep_that_fails_is_logged_and_runs_again_the_next_period(caplog: pytest.LogCaptureFixture) -> None:
    sweep = Sweep()
    sweeping = asyncio.create_task(sweep_every(sweep, every_seconds=0.01, what="apply held outcomes"))
    try:
        await eventually(lambda: _true(sweep.calls >= 6), timeout=5, message="the sweep ran after its failure")
    finally:
        await _cancel(sweeping)
    assert "could not apply held outcomes: RuntimeError('database down')" in caplog.text


async def _true(value: bool) -> bool:
    return value


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
