"""Telling a consumer that is stuck from one that is idle.

A consumer client can wedge without raising anything: after a broker restart its group coordination may stop for
good, and every fetch then returns nothing while records wait on the topic. An idle consumer also fetches nothing.
The difference is the group's backlog: records beyond the committed offset that no one moves past. `StallWatch`
holds the rule (pure, fed with times and offsets); `group_backlog` measures the backlog with the consumer's own
client; the consumer restarts its client when the watch says it is stuck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition


@dataclass(frozen=True, slots=True)
class Backlog:
    """Where the group stands on one partition: its committed offset (None before the first commit) and the end."""

    committed: int | None
    end: int

    @property
    def waiting(self) -> bool:
        """Records past the committed offset (a partition never committed counts as caught up: its start is
        unknown here, and a brand-new group's first fetch is not what this guards)."""
        return self.committed is not None and self.end > self.committed


@dataclass
class StallWatch:
    """Stuck = nothing fetched for `window` seconds, and two checks `window` apart find the same partition with
    records waiting past an unchanged committed offset (or cannot measure while the broker answers).

    Fetching anything resets the watch, so a consumer working through a database outage (it fetches, rewinds and
    fetches again) is never called stuck; neither is one whose broker is down, which restarting would not help.
    """

    window: float
    _idle_since: float | None = None
    _last_check: float | None = None
    _waiting: dict[TopicPartition, int | None] = field(default_factory=dict)
    _unmeasured: int = 0

    def fetched(self, now: float, records: int) -> None:
        """Report one fetch and how many records it returned."""
        if records:
            self._idle_since = None
            self._last_check = None
            self._waiting = {}
            self._unmeasured = 0
        elif self._idle_since is None:
            self._idle_since = now

    def check_due(self, now: float) -> bool:
        """Whether the consumer has been idle long enough, and long enough since the last check, to measure."""
        if self._idle_since is None or now - self._idle_since < self.window:
            return False
        return self._last_check is None or now - self._last_check >= self.window

    def judge(self, now: float, backlog: Mapping[TopicPartition, Backlog] | None, broker_answers: bool) -> bool:
        """Record a check (`backlog` None: it could not be measured) and say whether the consumer is stuck."""
        self._last_check = now
        if backlog is None:
            self._waiting = {}
            self._unmeasured = self._unmeasured + 1 if broker_answers else 0
            return self._unmeasured >= 2
        self._unmeasured = 0
        waiting = {partition: state.committed for partition, state in backlog.items() if state.waiting}
        stuck = any(partition in self._waiting and self._waiting[partition] == at for partition, at in waiting.items())
        self._waiting = waiting
        return stuck


async def group_backlog(consumer: Any, topics: Sequence[str], timeout_seconds: float) -> dict[TopicPartition, Backlog]:
    """The group's committed offset and the log end of every partition of `topics`, asked through `consumer` (an
    AIOKafkaConsumer); raises on a timeout or a broker error."""
    partitions = [
        TopicPartition(topic, number)
        for topic in topics
        for number in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not partitions:
        return {}
    async with asyncio.timeout(timeout_seconds):
        ends = await consumer.end_offsets(partitions)
        committed = await asyncio.gather(*(consumer.committed(partition) for partition in partitions))
    return {
        partition: Backlog(committed=at, end=int(ends[partition]))
        for partition, at in zip(partitions, committed, strict=True)
    }
