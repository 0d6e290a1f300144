"""Outbox relay: committed rows reach the broker in order, as CloudEvents, at least once and never lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import migrate
from shared.events import LeadScoredV1
from shared.outbox import OutboxRelay
from shared.sessions import make_sessions
from shared.topics import LEADS_SCORED
from shared.uow import UnitOfWork
from tests.unit.fakes import FakePublisher, header, messaging_schema

METADATA, MIGRATIONS = messaging_schema()


@dataclass
class Outbox:
    uow: UnitOfWork
    relay: OutboxRelay
    broker: FakePublisher


def _scored(lead_id: str) -> LeadScoredV1:
    return LeadScoredV1(
        lead_id=lead_id,
        score=80,
        verdict="qualified",
        model_version="rules-v1",
        contributions=(),
        scored_at=datetime(2024, 5, 1, tzinfo=UTC),
    )


def _relay(engine: AsyncEngine, broker: FakePublisher, *, batch_size: int = 500) -> OutboxRelay:
    sessions = make_sessions(engine)
    return OutboxRelay(
        engine=engine, sessions=sessions, metadata=METADATA, publisher=broker, lock_name="unit", batch_size=batch_size
    )


@pytest.fixture
async def outbox(engine: AsyncEngine) -> Outbox:
    await migrate(engine, MIGRATIONS, schema="unit")
    broker = FakePublisher()
    relay = _relay(engine, broker)
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", on_emit=relay.wake)
    return Outbox(uow, relay, broker)


async def _emit(uow: UnitOfWork, *lead_ids: str) -> list[str]:
    event_ids = []
    for lead_id in lead_ids:
        async with uow.transaction() as tx:
            event_ids.append((await tx.emit(_scored(lead_id))).id)
    return event_ids


def _published_ids(broker: FakePublisher) -> list[str]:
    return [header(record.headers, "ce_id") for record in broker.published]


async def test_pending_rows_are_published_in_commit_order_and_marked_sent(outbox: Outbox) -> None:
    event_ids = await _emit(outbox.uow, "lead-1", "lead-2", "lead-3")
    assert await outbox.relay.pending_count() == 3
    assert await outbox.relay.publish_pending() == 3
    assert _published_ids(outbox.broker) == event_ids
    assert await outbox.relay.pending_count() == 0
    assert await outbox.relay.publish_pending() == 0
    assert len(outbox.broker.published) == 3


async def test_published_record_is_a_cloudevent_keyed_by_lead(outbox: Outbox) -> None:
    [event_id] = await _emit(outbox.uow, "lead-1")
    await outbox.relay.publish_pending()
    [record] = outbox.broker.published
    assert (record.topic, record.key) == (LEADS_SCORED, b"lead-1")
    assert header(record.headers, "ce_specversion") == "1.0"
    assert header(record.headers, "ce_type") == LeadScoredV1.EVENT_TYPE
    assert header(record.headers, "ce_source") == "/baton/unit"
    assert header(record.headers, "ce_subject") == "lead-1"
    assert header(record.headers, "content-type") == "application/json"
    assert record.value is not None
    assert b'"verdict":"qualified"' in record.value
    assert header(record.headers, "ce_id") == event_id


async def test_broker_outage_keeps_rows_for_a_later_attempt(outbox: Outbox) -> None:
    event_ids = await _emit(outbox.uow, "lead-1", "lead-2")
    outbox.broker.outages.append(ConnectionRefusedError("broker down"))
    with pytest.raises(ConnectionRefusedError):
        await outbox.relay.publish_pending()
    assert await outbox.relay.pending_count() == 2
    assert await outbox.relay.publish_pending() == 2
    assert _published_ids(outbox.broker) == event_ids
    assert await outbox.relay.pending_count() == 0


async def test_rows_published_before_a_crash_are_republished_with_the_same_event_ids(outbox: Outbox) -> None:
    event_ids = await _emit(outbox.uow, "lead-1", "lead-2")
    outbox.broker.lost_acks = 1
    with pytest.raises(TimeoutError):
        await outbox.relay.publish_pending()
    assert await outbox.relay.publish_pending() == 2
    assert _published_ids(outbox.broker) == event_ids + event_ids


async def test_a_fresh_relay_picks_up_what_a_crashed_one_left(outbox: Outbox, engine: AsyncEngine) -> None:
    event_ids = await _emit(outbox.uow, "lead-1")
    outbox.broker.lost_acks = 1
    with pytest.raises(TimeoutError):
        await outbox.relay.publish_pending()
    restarted = FakePublisher()
    assert await _relay(engine, restarted).publish_pending() == 1
    assert _published_ids(restarted) == event_ids


async def test_large_backlog_is_published_in_ordered_batches(outbox: Outbox, engine: AsyncEngine) -> None:
    event_ids = await _emit(outbox.uow, "lead-1", "lead-2", "lead-3")
    relay = _relay(engine, outbox.broker, batch_size=2)
    assert await relay.publish_pending() == 2
    assert await relay.pending_count() == 1
    assert await relay.publish_pending() == 1
    assert _published_ids(outbox.broker) == event_ids


async def test_rows_emitted_after_an_outage_follow_the_older_ones(outbox: Outbox) -> None:
    first = await _emit(outbox.uow, "lead-1")
    outbox.broker.outages.append(OSError("broker down"))
    with pytest.raises(OSError):
        await outbox.relay.publish_pending()
    second = await _emit(outbox.uow, "lead-2")
    await outbox.relay.publish_pending()
    assert _published_ids(outbox.broker) == first + second


# --- rows handed over by the writers of the process -----------------------------------------------------------------


@dataclass
class Running:
    uow: UnitOfWork
    relay: OutboxRelay
    broker: FakePublisher


@pytest.fixture
async def running(engine: AsyncEngine) -> AsyncIterator[Running]:
    """A relay running in the background that never reads the table on its own (an idle read every hour): what it
    publishes after catching up came from memory."""
    await migrate(engine, MIGRATIONS, schema="unit")
    broker = FakePublisher()
    relay = OutboxRelay(engine=engine, sessions=make_sessions(engine), metadata=METADATA, publisher=broker,
                        lock_name="unit", idle_seconds=3600, max_backoff_seconds=0.05)  # fmt: skip
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", hand_over=relay.hand_over)
    task = asyncio.create_task(relay.run())
    try:
        yield Running(uow, relay, broker)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)  # poll


async def test_rows_committed_after_catching_up_are_published_from_memory_in_commit_order(running: Running) -> None:
    async def all_three_published() -> bool:
        return len(running.broker.published) == 3

    event_ids = await _emit(running.uow, "lead-1", "lead-2", "lead-3")
    await _until(all_three_published, "three events published without any read of the table")
    assert _published_ids(running.broker) == event_ids


async def test_rows_published_from_memory_are_marked_sent(running: Running) -> None:
    async def all_marked() -> bool:
        return await running.relay.pending_count() == 0

    await _emit(running.uow, "lead-1", "lead-2")
    await _until(all_marked, "rows marked sent after their publication")
    assert len(running.broker.published) == 2


async def test_a_failed_publication_from_memory_is_caught_up_from_the_table_in_order(running: Running) -> None:
    async def both_published() -> bool:
        return len(set(_published_ids(running.broker))) == 2 and await running.relay.pending_count() == 0

    running.broker.outages.append(OSError("broker down"))
    first = await _emit(running.uow, "lead-1")
    second = await _emit(running.uow, "lead-2")
    await _until(both_published, "both events published once the broker is back")
    assert list(dict.fromkeys(_published_ids(running.broker))) == first + second


async def test_a_relay_stopped_right_after_publishing_from_memory_marks_those_rows_first(engine: AsyncEngine) -> None:
    await migrate(engine, MIGRATIONS, schema="unit")
    broker = FakePublisher()
    relay = OutboxRelay(engine=engine, sessions=make_sessions(engine), metadata=METADATA, publisher=broker,
                        lock_name="unit", mark_interval_seconds=3600)  # fmt: skip
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", hand_over=relay.hand_over)
    task = asyncio.create_task(relay.run())

    async def published() -> bool:
        return len(broker.published) == 1

    await _emit(uow, "lead-1")
    await _until(published, "the event published from memory")
    relay.stop()
    await asyncio.wait_for(task, 10)
    assert await relay.pending_count() == 0  # marked on the way out, not an hour later
    assert await _relay(engine, FakePublisher()).publish_pending() == 0


async def test_a_relay_publishes_what_the_table_holds_before_what_is_handed_over(engine: AsyncEngine) -> None:
    """Rows left unsent by a stopped process are published before newer ones of this process, in commit order."""
    await migrate(engine, MIGRATIONS, schema="unit")
    left_behind = await _emit(UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit"), "lead-1", "lead-1")
    broker = FakePublisher()
    relay = OutboxRelay(engine=engine, sessions=make_sessions(engine), metadata=METADATA, publisher=broker,
                        lock_name="unit", idle_seconds=3600)  # fmt: skip
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", hand_over=relay.hand_over)
    newer = await _emit(uow, "lead-1")  # handed over before the relay even started: left to its first read
    task = asyncio.create_task(relay.run())

    async def all_published() -> bool:
        return len(broker.published) >= 3

    try:
        await _until(all_published, "the three events published")
        later = await _emit(uow, "lead-1")

        async def four_published() -> bool:
            return len(set(_published_ids(broker))) == 4

        await _until(four_published, "the event committed after catching up published")
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
    assert list(dict.fromkeys(_published_ids(broker))) == left_behind + newer + later
