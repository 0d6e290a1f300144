"""The bench's search for the maximum sustained rate (bench/speed/phases.py): it climbs until a step fails, bisects
between the last pass and the first failure, and starts each step only once every consumer group has caught up
on the one before, so a step is judged on its own rate, not on the backlog a failed step left."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from speed.load import Ledger, PostStats
from speed.phases import CAUGHT_UP_RECORDS, Pipeline, search_max_sustained


class MachineThatHolds:
    """Sustains every rate up to `limit`."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.rates: list[float] = []

    async def sustain_step(self, rate: float, seconds: float) -> dict[str, Any]:
        self.rates.append(rate)
        return {"rate": rate, "sustained": rate <= self.limit}


async def test_the_search_climbs_then_bisects_to_the_highest_rate_that_held() -> None:
    machine = MachineThatHolds(limit=620)

    best, steps = await search_max_sustained(machine, start=200, seconds=30, max_steps=7)

    assert machine.rates == [200, 300, 500, 700, 600, 650]
    assert best == 600
    assert [step["sustained"] for step in steps] == [True, True, True, False, True, False]


async def test_the_search_stops_after_its_steps() -> None:
    machine = MachineThatHolds(limit=5000)

    best, steps = await search_max_sustained(machine, start=200, seconds=30, max_steps=3)

    assert machine.rates == [200, 300, 500]
    assert (best, len(steps)) == (500, 3)


class FeedbackBehind:
    """A monitor whose feedback group is `behind` records behind and works off 5,000 of them between two reads."""

    def __init__(self, behind: int) -> None:
        self.phase = ""
        first = {"phase": "", "lag": {"baton-feedback": behind}, "backlog": 0, "cpu": {}}
        self._samples: list[dict[str, Any]] = [first]
        self.lag = None

    @property
    def samples(self) -> list[dict[str, Any]]:
        lag = max(0, self._samples[-1]["lag"]["baton-feedback"] - 5000)
        self._samples.append({"phase": self.phase, "lag": {"baton-feedback": lag}, "backlog": 0, "cpu": {}})
        return self._samples

    def feedback_lag_now(self) -> int:
        """The lag of the latest sample, read without the monitor moving on."""
        return int(self._samples[-1]["lag"]["baton-feedback"])

    def cpu_by_phase(self, phase: str) -> dict[str, float]:
        return {}


class LoadThatNotes:
    """Posts nothing; notes the feedback lag the monitor showed when the step's load began."""

    def __init__(self, monitor: FeedbackBehind) -> None:
        self.monitor = monitor
        self.lag_at_start: list[int] = []

    async def run(self, *, rate: float, seconds: float, **_: object) -> PostStats:
        self.lag_at_start.append(self.monitor.feedback_lag_now())
        return PostStats(rate=rate, seconds=seconds)


async def test_a_step_starts_once_every_consumer_group_caught_up() -> None:
    monitor = FeedbackBehind(behind=12_000)
    load = LoadThatNotes(monitor)
    pipeline = Pipeline(load=load, ledger=Ledger(), monitor=monitor, run="test", grace_seconds=1,  # type: ignore[arg-type]
                        drain_seconds=1)  # fmt: skip

    step = await asyncio.wait_for(pipeline.sustain_step(550, seconds=1), timeout=10)

    assert load.lag_at_start == [0]
    assert load.lag_at_start[0] <= CAUGHT_UP_RECORDS
    assert step["catch_up_seconds"] > 0
    assert step["name"] == "sustain-550"
