"""Telling a consumer that is stuck from one that is idle.

A consumer client can wedge without raising anything: after a broker restart its group coordination may stop for
good, and every fetch then returns nothing while records wait on the topic. An idle consumer also fetches nothing.
The difference is the backlog: records past where the consumer stands that it never moves past. `StallWatch`
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
    """Where the consumer stands on one partition (its position, or the group's committed offset: None before the
    first commit) and the log end."""

    at: int | None
    end: int

    @property
    def waiting(self) -> bool:
        """Records past where the consumer stands (a partition the group never committed counts as caught up: its
        start is unknown here, and a brand-new group's first fetch is not what this guards)."""
        return self.at is not None and self.end > self.at


@dataclass
class StallWatch:
    """Stuck = nothing fetched for `window` seconds, and two checks `window` apart find the same partition with
    records waiting past an unchanged position (or cannot measure while the broker answers).

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
        waiting = {partition: state.at for partition, state in backlog.items() if state.waiting}
        stuck = any(partition in self._waiting and self._waiting[partition] == at for partition, at in waiting.items())
        self._waiting = waiting
        return stuck


async def group_backlog(consumer: Any, topics: Sequence[str], timeout_seconds: float) -> dict[TopicPartition, Backlog]:
    """Where the consumer stands against the log end, asked through `consumer` (an AIOKafkaConsumer): on the
    partitions assigned to it, its fetch position (records it has not even fetched are waiting); with none assigned,
    the group's committed offset on every partition of `topics` (a client wedged out of its group holds none, and a
    replica with none to hold sees the others' progress). Raises on a timeout or a broker error."""
    assigned = sorted(consumer.assignment(), key=lambda partition: (partition.topic, partition.partition))
    partitions = assigned or [
        TopicPartition(topic, number)
        for topic in topics
        for number in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not partitions:
        return {}
    where = consumer.position if assigned else consumer.committed
    async with asyncio.timeout(timeout_seconds):
        ends = await consumer.end_offsets(partitions)
        at = await asyncio.gather(*(where(partition) for partition in partitions))
    return {
        partition: Backlog(at=offset, end=int(ends[partition]))
        for partition, offset in zip(partitions, at, strict=True)
    }
