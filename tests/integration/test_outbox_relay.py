"""The outbox relay against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import advisory_lock_key
from shared.envelope import CloudEvent, utc_now
from shared.events import LeadCapturedV1
from shared.kafka import KafkaPublisher
from shared.outbox import OutboxRelay
from shared.sessions import make_sessions
from shared.tables import OUTBOX
from shared.topics import LEADS_CAPTURED
from shared.uow import UnitOfWork
from tests.integration.conftest import fresh_topic, metadata
from tests.support.infra import KafkaBroker, free_port
from tests.support.kafka_reader import header, read_topic


async def add_outbox_rows(engine: AsyncEngine, topic: str, count: int) -> list[str]:
    """Commit `count` events for one lead into the outbox; returns their ids in commit order."""
    outbox = metadata.tables[OUTBOX]
    ids = []
    async with make_sessions(engine)() as session, session.begin():
        for number in range(count):
            event = CloudEvent(type="dev.baton.test.v1", source="/baton/test", subject="lead-1", data={"n": number})
            key, value, headers = event.to_kafka()
            await session.execute(
                outbox.insert().values(
                    event_id=event.id,
                    topic=topic,
                    message_key=key,
                    value=value,
                    headers=[[name, raw.decode()] for name, raw in headers],
                    created_at=utc_now(),
                )
            )
            ids.append(event.id)
    return ids


def relay_for(engine: AsyncEngine, bootstrap_servers: str, *, timeout: float = 10.0) -> OutboxRelay:
    publisher = KafkaPublisher(bootstrap_servers=bootstrap_servers, client_id="test-relay", timeout_seconds=timeout)
    return OutboxRelay(
        engine=engine, sessions=make_sessions(engine), metadata=metadata, publisher=publisher, lock_name="test"
    )


async def test_relay_publishes_committed_rows_in_order_as_cloudevents(engine: AsyncEngine, kafka: KafkaBroker) -> None:
    topic = fresh_topic("relay")
    ids = await add_outbox_rows(engine, topic, 20)
    relay = relay_for(engine, kafka.bootstrap_servers)

    assert await relay.publish_pending() == 20

    records = await read_topic(kafka.bootstrap_servers, topic, until=lambda seen: len(seen) >= 20)
    assert [header(record, "ce_id") for record in records] == ids
    assert {header(record, "ce_subject") for record in records} == {"lead-1"}
    assert all(record.key == b"lead-1" for record in records)
    assert all(header(record, "content-type") == "application/json" for record in records)
    assert await relay.pending_count() == 0


async def test_relay_with_broker_down_fails_fast_and_keeps_every_row(engine: AsyncEngine, kafka: KafkaBroker) -> None:
    topic = fresh_topic("outage")
    ids = await add_outbox_rows(engine, topic, 5)
    dead_relay = relay_for(engine, f"127.0.0.1:{free_port()}", timeout=2.0)

    started = time.monotonic()
    try:
        await dead_relay.publish_pending()
        raise AssertionError("publishing to a dead broker succeeded")
    except Exception as exc:
        assert not isinstance(exc, AssertionError), exc
    assert time.monotonic() - started < 10, "a broker call hung past its deadline"
    assert await dead_relay.pending_count() == 5

    assert await relay_for(engine, kafka.bootstrap_servers).publish_pending() == 5
    records = await read_topic(kafka.bootstrap_servers, topic, until=lambda seen: len(seen) >= 5)
    assert [header(record, "ce_id") for record in records] == ids


async def test_a_commit_in_another_process_wakes_the_relay_at_once_through_notify(
    engine: AsyncEngine, kafka: KafkaBroker
) -> None:
    """With replicas, the relay holding the outbox turn is not in the process that committed: NOTIFY wakes it long
    before its idle poll (here an hour) would."""
    publisher = KafkaPublisher(bootstrap_servers=kafka.bootstrap_servers, client_id="test-relay", timeout_seconds=10)
    relay = OutboxRelay(engine=engine, sessions=make_sessions(engine), metadata=metadata, publisher=publisher,
                        lock_name="notify", idle_seconds=3600)  # fmt: skip
    other_process = UnitOfWork(make_sessions(engine), metadata, source="/baton/test",
                               notify_channel=relay.notify_channel)  # fmt: skip
    running = asyncio.create_task(relay.run())
    try:
        # The first event may be caught by the relay's start-up pass; once it is out, the relay idles.
        for attempt in ("first", "second"):
            key = f"lead-{attempt}-{uuid.uuid4()}".encode()
            committed = time.monotonic()
            async with other_process.transaction() as tx:
                await tx.emit(LeadCapturedV1(lead_id=key.decode(), email="ada@acme.example", captured_at=utc_now()))
            records = await read_topic(kafka.bootstrap_servers, LEADS_CAPTURED, timeout=20, until=_has(key))
            assert any(record.key == key for record in records), attempt
        assert time.monotonic() - committed < 10
    finally:
        relay.stop()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await publisher.close()


async def test_a_commit_notifies_with_its_process_origin_and_that_process_relay_ignores_it(
    engine: AsyncEngine, kafka: KafkaBroker
) -> None:
    """The committing process wakes its own relay in process; its NOTIFY is for the other replicas, and would only
    make its own relay claim again and find nothing."""
    relay = relay_for(engine, kafka.bootstrap_servers)
    same_process = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", on_emit=relay.wake,
                              notify_channel=relay.notify_channel, notify_origin=relay.notify_origin)  # fmt: skip
    channel = relay.notify_channel
    assert channel is not None
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        async with engine.connect() as listening:
            raw = (await listening.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.add_listener(channel, lambda *notification: heard.put_nowait(notification[3]))
            async with same_process.transaction() as tx:
                await tx.emit(LeadCapturedV1(lead_id="lead-origin", email="ada@acme.example", captured_at=utc_now()))
            origin = await asyncio.wait_for(heard.get(), 10)
        assert origin == relay.notify_origin
        assert relay._wakeup.is_set()  # by the commit, in process
        relay._wakeup.clear()

        relay._on_notify(raw, 0, channel, origin)
        assert not relay._wakeup.is_set()
        relay._on_notify(raw, 0, channel, "another-replica")
        assert relay._wakeup.is_set()
    finally:
        await relay._publisher.close()


def _has(key: bytes) -> Callable[[list[Any]], bool]:
    return lambda seen: any(record.key == key for record in seen)


async def test_while_another_replica_has_its_turn_this_relay_reads_and_publishes_nothing(
    engine: AsyncEngine, kafka: KafkaBroker
) -> None:
    topic = fresh_topic("turn")
    await add_outbox_rows(engine, topic, 3)
    relay = relay_for(engine, kafka.bootstrap_servers)
    try:
        async with engine.connect() as other_replica, other_replica.begin():
            lock = func.pg_try_advisory_xact_lock(advisory_lock_key("outbox:test"))
            assert await other_replica.scalar(select(lock))
            assert await relay.publish_pending() == 0
            assert await relay.pending_count() == 3
        assert await relay.publish_pending() == 3
    finally:
        await relay._publisher.close()
    records = await read_topic(kafka.bootstrap_servers, topic, until=lambda seen: len(seen) >= 3)
    assert len(records) == 3


async def test_rows_committed_in_the_relay_process_reach_kafka_from_memory_and_are_marked_sent(
    engine: AsyncEngine, kafka: KafkaBroker
) -> None:
    """No read of the table between a commit and its publication: the relay here reads it once an hour."""
    publisher = KafkaPublisher(bootstrap_servers=kafka.bootstrap_servers, client_id="test-relay", timeout_seconds=10)
    relay = OutboxRelay(engine=engine, sessions=make_sessions(engine), metadata=metadata, publisher=publisher,
                        lock_name="direct", idle_seconds=3600)  # fmt: skip
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", hand_over=relay.hand_over)
    running = asyncio.create_task(relay.run())
    key = f"lead-direct-{uuid.uuid4()}"
    try:
        event_ids = []
        for number in range(3):
            captured = LeadCapturedV1(lead_id=key, email=f"ada{number}@acme.example", captured_at=utc_now())
            async with uow.transaction() as tx:
                event_ids.append((await tx.emit(captured)).id)
        mine = key.encode()
        records = await read_topic(kafka.bootstrap_servers, LEADS_CAPTURED, timeout=20,
                                   until=lambda seen: sum(record.key == mine for record in seen) >= 3)  # fmt: skip
        assert [header(record, "ce_id") for record in records if record.key == mine] == event_ids
        deadline = time.monotonic() + 10
        while await _unsent(engine, event_ids):
            assert time.monotonic() < deadline, "rows published from memory never marked sent"
            await asyncio.sleep(0.05)  # poll
    finally:
        relay.stop()
        await asyncio.wait_for(running, 10)
        await publisher.close()


async def _unsent(engine: AsyncEngine, event_ids: list[str]) -> int:
    outbox = metadata.tables[OUTBOX]
    async with engine.connect() as connection:
        unsent = outbox.c.sent_at.is_(None) & outbox.c.event_id.in_(event_ids)
        return int(await connection.scalar(select(func.count()).select_from(outbox).where(unsent)) or 0)


async def test_the_idle_read_leaves_fresh_rows_to_the_replica_that_wrote_them(
    engine: AsyncEngine, kafka: KafkaBroker
) -> None:
    """Another replica publishes its own commits from memory; only rows unsent for the grace (left by a crashed
    process) are the idle read's to publish."""
    topic = fresh_topic("grace")
    ids = await add_outbox_rows(engine, topic, 2)
    relay = relay_for(engine, kafka.bootstrap_servers)
    try:
        assert await relay.publish_pending(unsent_for=timedelta(minutes=1)) == 0
        outbox = metadata.tables[OUTBOX]
        async with engine.begin() as connection:
            left_behind = outbox.update().where(outbox.c.event_id.in_(ids))
            await connection.execute(left_behind.values(created_at=utc_now() - timedelta(minutes=2)))
        assert await relay.publish_pending(unsent_for=timedelta(minutes=1)) == 2
    finally:
        await relay._publisher.close()
    records = await read_topic(kafka.bootstrap_servers, topic, until=lambda seen: len(seen) >= 2)
    assert [header(record, "ce_id") for record in records] == ids
