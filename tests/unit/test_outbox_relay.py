"""Outbox relay: committed rows reach the broker in order, as CloudEvents, at least once and never lost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_sessions, migrate
from shared.events import LeadScoredV1
from shared.outbox import OutboxRelay
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
