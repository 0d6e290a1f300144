"""A consumer that fetches nothing while its group's records wait is stuck, and replaces its client; an idle one,
or one whose broker is down, is left alone."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.consumer import EventConsumer, Stalled
from shared.sessions import make_sessions
from shared.stall import Backlog, StallWatch, group_backlog
from shared.topics import LEADS_CAPTURED, LEADS_SCORED
from shared.uow import UnitOfWork
from tests.unit.fakes import FakePublisher, messaging_schema

METADATA, _ = messaging_schema()

P0, P1 = TopicPartition(LEADS_SCORED, 0), TopicPartition(LEADS_SCORED, 1)


def _idle_for(watch: StallWatch, seconds: float) -> None:
    watch.fetched(0.0, 0)
    watch.fetched(seconds, 0)


def test_a_consumer_is_not_checked_before_it_has_been_idle_for_the_window() -> None:
    watch = StallWatch(window=30)
    watch.fetched(0.0, 0)
    assert not watch.check_due(29.9)
    assert watch.check_due(30.0)


def test_records_waiting_past_an_unchanged_commit_at_two_checks_mean_stuck() -> None:
    watch = StallWatch(window=30)
    _idle_for(watch, 30)
    assert not watch.judge(30, {P0: Backlog(at=4, end=10)}, True)
    assert not watch.check_due(59)
    assert watch.check_due(60)
    assert watch.judge(60, {P0: Backlog(at=4, end=10)}, True)


def test_a_commit_that_moved_between_checks_is_progress() -> None:
    watch = StallWatch(window=30)
    _idle_for(watch, 30)
    watch.judge(30, {P0: Backlog(at=4, end=10)}, True)
    assert not watch.judge(60, {P0: Backlog(at=7, end=12)}, True)


def test_nothing_waiting_is_idle_not_stuck() -> None:
    watch = StallWatch(window=30)
    _idle_for(watch, 30)
    caught_up = {P0: Backlog(at=10, end=10), P1: Backlog(at=None, end=3)}
    assert not watch.judge(30, caught_up, True)
    assert not watch.judge(60, caught_up, True)


def test_a_fetch_with_records_resets_the_watch() -> None:
    watch = StallWatch(window=30)
    _idle_for(watch, 30)
    watch.judge(30, {P0: Backlog(at=4, end=10)}, True)
    watch.fetched(45, 2)
    assert not watch.check_due(60)
    watch.fetched(50, 0)
    assert watch.check_due(80)
    assert not watch.judge(80, {P0: Backlog(at=4, end=10)}, True)


def test_a_backlog_that_cannot_be_measured_twice_while_the_broker_answers_is_stuck() -> None:
    watch = StallWatch(window=30)
    _idle_for(watch, 30)
    assert not watch.judge(30, None, True)
    assert watch.judge(60, None, True)


def test_an_unreachable_broker_is_an_outage_not_a_stuck_client() -> None:
    watch = StallWatch(window=30)
    _idle_for(watch, 30)
    for check in range(1, 6):
        assert not watch.judge(30.0 * check, None, False)


class IdleKafkaConsumer:
    """A client whose fetches return nothing; P0 holds `end` records, the group stands at `at` on it, P1 is empty."""

    def __init__(self, owner: EventConsumer, *, at: int, end: int, fetches: int = 50) -> None:
        self.owner, self.at, self.end, self.fetches_left = owner, at, end, fetches
        self.assigned: set[TopicPartition] = {P0}
        self.unreachable = False

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.fetches_left -= 1
        if self.fetches_left == 0:
            self.owner.stop()
        return {}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1} if topic == LEADS_SCORED else set()

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.unreachable:
            raise KafkaTimeoutError()
        return {partition: self.end if partition == P0 else 0 for partition in partitions}

    async def position(self, partition: TopicPartition) -> int:
        return self.at if partition == P0 else 0

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.at if partition == P0 else None


def _consumer(uow: UnitOfWork) -> EventConsumer:
    return EventConsumer(
        bootstrap_servers="127.0.0.1:1",  # nothing listens: the broker counts as down
        group_id="unit",
        topics=[LEADS_SCORED, LEADS_CAPTURED],
        handlers={},
        uow=uow,
        dead_letters=FakePublisher(),
        stall_seconds=0.0,  # check on every empty fetch
    )


@pytest.fixture
def uow(engine: AsyncEngine) -> UnitOfWork:
    return UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit")  # nothing is fetched: never used


async def test_a_client_fetching_nothing_while_its_records_wait_is_replaced(uow: UnitOfWork) -> None:
    consumer = _consumer(uow)
    client = IdleKafkaConsumer(consumer, at=4, end=10)
    with pytest.raises(Stalled):
        await consumer._consume(client)
    assert client.fetches_left > 0


async def test_an_idle_client_with_nothing_waiting_keeps_consuming(uow: UnitOfWork) -> None:
    consumer = _consumer(uow)
    client = IdleKafkaConsumer(consumer, at=10, end=10)
    await consumer._consume(client)
    assert client.fetches_left == 0


async def test_records_waiting_on_another_members_partition_are_not_this_clients_business(uow: UnitOfWork) -> None:
    consumer = _consumer(uow)
    client = IdleKafkaConsumer(consumer, at=4, end=10)
    client.assigned = {P1}
    await consumer._consume(client)
    assert client.fetches_left == 0


async def test_a_client_that_cannot_reach_a_down_broker_is_kept(uow: UnitOfWork) -> None:
    consumer = _consumer(uow)
    client = IdleKafkaConsumer(consumer, at=4, end=10)
    client.unreachable = True
    await consumer._consume(client)
    assert client.fetches_left == 0


async def test_a_client_holding_no_partition_judges_by_the_groups_commits(uow: UnitOfWork) -> None:
    consumer = _consumer(uow)
    client = IdleKafkaConsumer(consumer, at=4, end=10)
    client.assigned = set()
    with pytest.raises(Stalled):
        await consumer._consume(client)


async def test_the_backlog_is_measured_at_the_clients_positions_or_else_the_groups_commits(uow: UnitOfWork) -> None:
    client = IdleKafkaConsumer(_consumer(uow), at=4, end=10)
    topics = [LEADS_SCORED, LEADS_CAPTURED]
    assert await group_backlog(client, topics, timeout_seconds=1) == {P0: Backlog(at=4, end=10)}
    client.assigned = set()
    assert await group_backlog(client, topics, timeout_seconds=1) == {
        P0: Backlog(at=4, end=10),
        P1: Backlog(at=None, end=0),
    }
