"""The event consumer against the real broker and PostgreSQL: inbox, DLQ, committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import generate_latest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.consumer import EventConsumer, Handler
from shared.envelope import CloudEvent
from shared.kafka import KafkaPublisher
from shared.metrics import ServiceMetrics, metrics_context
from shared.topics import dead_letter_topic
from shared.uow import Transaction, UnitOfWork
from tests.integration.conftest import effects, fresh_topic
from tests.support.infra import KafkaBroker
from tests.support.kafka_reader import header, read_topic
from tests.support.polling import eventually
from tests.unit.test_metrics import value

EVENT_TYPE = "dev.baton.test.v1"


async def record_effect(tx: Transaction, event: CloudEvent) -> None:
    await tx.session.execute(effects.insert().values(event_id=event.id, note=str(event.data.get("note"))))


async def always_fails(tx: Transaction, event: CloudEvent) -> None:
    if event.data.get("note") == "bad":
        raise ValueError("this event can never be applied")
    await record_effect(tx, event)


@contextlib.asynccontextmanager
async def running_consumer(
    kafka: KafkaBroker,
    uow: UnitOfWork,
    topic: str,
    group: str,
    handler: Handler,
    *,
    kind: type[EventConsumer] = EventConsumer,
    stall_seconds: float = 30.0,
    timeout_seconds: float = 10.0,
    metrics: ServiceMetrics | None = None,
) -> AsyncIterator[EventConsumer]:
    publisher = KafkaPublisher(bootstrap_servers=kafka.bootstrap_servers, client_id="test-dlq", timeout_seconds=10)
    consumer = kind(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        topics=[topic],
        handlers={EVENT_TYPE: handler},
        uow=uow,
        dead_letters=publisher,
        stall_seconds=stall_seconds,
        timeout_seconds=timeout_seconds,
    )
    context = metrics_context(metrics) if metrics is not None else contextvars.copy_context()
    task = context.run(asyncio.create_task, consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.close()


async def produce(kafka: KafkaBroker, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers, partition=0)
    finally:
        await producer.stop()


async def effect_notes(uow: UnitOfWork) -> list[str]:
    async with uow.read() as session:
        return list((await session.execute(select(effects.c.note).order_by(effects.c.note))).scalars())


async def committed_offset(kafka: KafkaBroker, topic: str, group: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        result = await consumer.committed(TopicPartition(topic, 0))
        return int(result) if result is not None else None
    finally:
        await consumer.stop()


def event(note: str) -> CloudEvent:
    return CloudEvent(type=EVENT_TYPE, source="/test", subject="lead-1", data={"note": note})


async def test_redelivered_event_is_applied_once_and_offsets_are_committed(kafka: KafkaBroker, uow: UnitOfWork) -> None:
    topic, group = fresh_topic("inbox"), fresh_topic("group")
    first, second = event("first"), event("second")
    await produce(kafka, topic, [first.to_kafka(), first.to_kafka(), second.to_kafka()])

    async with running_consumer(kafka, uow, topic, group, record_effect):
        await eventually(lambda: _count_is(uow, 2), message="both events applied")
        await eventually(lambda: _offset_is(kafka, topic, group, 3), message="offset committed past all three")

    assert await effect_notes(uow) == ["first", "second"]


async def test_poison_and_failing_events_go_to_the_dlq_and_later_events_flow(
    kafka: KafkaBroker, uow: UnitOfWork
) -> None:
    topic, group = fresh_topic("poison"), fresh_topic("group")
    bad = event("bad")
    await produce(kafka, topic, [(b"lead-1", b"{not json", []), bad.to_kafka(), event("after").to_kafka()])

    async with running_consumer(kafka, uow, topic, group, always_fails):
        await eventually(lambda: _count_is(uow, 1), message="the good event after the poison applied")
        letters = await read_topic(kafka.bootstrap_servers, dead_letter_topic(topic), until=lambda seen: len(seen) >= 2)
        await eventually(lambda: _offset_is(kafka, topic, group, 3), message="partition moved past the poison")

    assert await effect_notes(uow) == ["after"]
    assert [letter.value for letter in letters] == [b"{not json", bad.to_kafka()[1]]
    assert [header(letter, "baton_error_type") for letter in letters] == ["InvalidEvent", "ValueError"]
    assert all(header(letter, "baton_original_topic") == topic for letter in letters)
    assert header(letters[1], "ce_id") == bad.id


async def _count_is(uow: UnitOfWork, expected: int) -> bool:
    async with uow.read() as session:
        return await session.scalar(select(func.count()).select_from(effects)) == expected


async def _offset_is(kafka: KafkaBroker, topic: str, group: str, expected: int) -> bool:
    return await committed_offset(kafka, topic, group) == expected


class WedgeableConsumer(EventConsumer):
    """The service's consumer, keeping each Kafka client it makes so the test can wedge one."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.clients: list[AIOKafkaConsumer] = []

    def _new_consumer(self) -> AIOKafkaConsumer:
        client = super()._new_consumer()
        self.clients.append(client)
        return client


async def test_a_client_that_silently_stops_fetching_is_replaced_and_later_events_flow(
    kafka: KafkaBroker, uow: UnitOfWork
) -> None:
    topic, group = fresh_topic("wedge"), fresh_topic("group")
    await produce(kafka, topic, [event("before").to_kafka()])
    wedgeable = running_consumer(kafka, uow, topic, group, record_effect, kind=WedgeableConsumer, stall_seconds=1.0)
    async with wedgeable as consumer:
        assert isinstance(consumer, WedgeableConsumer)
        await eventually(lambda: _offset_is(kafka, topic, group, 1), message="the first event applied and committed")
        # What a wedged client looks like from outside: no error, no records, ever again. (Its fetch loop swallows
        # a cancellation that lands in some of its awaits, so it is cancelled until it has really stopped; the fetch
        # it left waiting at the broker, for up to the fetch wait, would still bring the next record.)
        fetcher = consumer.clients[0]._fetcher

        async def fetching_stopped() -> bool:
            fetches = [fetcher._fetch_task, *fetcher._pending_tasks]
            for fetch in fetches:
                fetch.cancel()
            return all(fetch.done() for fetch in fetches)

        await eventually(fetching_stopped, message="the first client's fetch loop stopped")
        await produce(kafka, topic, [event("after").to_kafka()])
        await eventually(lambda: _count_is(uow, 2), timeout=60, message="the event after the wedge applied")

    assert len(consumer.clients) >= 2
    assert await effect_notes(uow) == ["after", "before"]


async def test_a_client_whose_offset_commits_keep_failing_is_replaced_and_the_offsets_land(
    kafka: KafkaBroker, uow: UnitOfWork
) -> None:
    """After a broker restart a client can go on fetching while its commits time out for good: after three failed
    commits in a row the consumer replaces it, and the next client commits what was applied."""
    topic, group = fresh_topic("uncommitted"), fresh_topic("group")
    wedgeable = running_consumer(kafka, uow, topic, group, record_effect, kind=WedgeableConsumer, timeout_seconds=1.0)
    async with wedgeable as consumer:
        assert isinstance(consumer, WedgeableConsumer)
        await eventually(lambda: _has_clients(consumer, 1), message="the first client made")
        stuck = asyncio.Event()  # never set: every commit of the first client waits past the timeout

        async def commit_never_answered(*_: Any, **__: Any) -> None:
            await stuck.wait()

        consumer.clients[0].commit = commit_never_answered
        await produce(kafka, topic, [event(note).to_kafka() for note in ("one", "two", "three", "four")])
        await eventually(lambda: _offset_is(kafka, topic, group, 4), timeout=60, message="offsets committed")

    assert len(consumer.clients) >= 2
    assert await effect_notes(uow) == ["four", "one", "three", "two"]


async def _has_clients(consumer: WedgeableConsumer, count: int) -> bool:
    return len(consumer.clients) >= count


async def test_an_event_applied_in_an_earlier_batch_changes_nothing_when_it_comes_again(
    kafka: KafkaBroker, engine: AsyncEngine, uow: UnitOfWork
) -> None:
    """A batch is applied assuming none of its events was applied before, its inbox rows written with its last
    writes; one holding a redelivery rolls back and is applied again with the inbox checked first (counted), and so
    are the batches of the next seconds."""
    topic, group = fresh_topic("redelivered"), fresh_topic("group")
    old, new = event("old"), event("new")
    async with uow.transaction() as tx:
        assert await tx.mark_processed(old.id, topic=topic)
    await produce(kafka, topic, [old.to_kafka(), new.to_kafka(), event("newer").to_kafka()])

    metrics, statements = ServiceMetrics(), list[str]()
    async with running_consumer(kafka, uow, topic, group, record_effect, metrics=metrics):
        await eventually(lambda: _offset_is(kafka, topic, group, 3), message="offset committed past all three")
        # For a while after, batches check the inbox first, instead of each paying for a failed attempt.
        sqlalchemy_event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        await produce(kafka, topic, [event("later").to_kafka()])
        await eventually(lambda: _count_is(uow, 3), message="the later event applied")

    assert await effect_notes(uow) == ["later", "new", "newer"]
    assert any("ON CONFLICT (event_id) DO NOTHING" in statement for statement in statements), statements
    assert value(generate_latest(metrics.registry), "baton_consumer_batches_reapplied_total") == 1
