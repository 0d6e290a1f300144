"""Event consumer, driven without a broker: exactly-once effects, retries, dead letters and outage handling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.consumer import Batched, EventConsumer, Outage, _runs
from shared.db import migrate
from shared.envelope import CloudEvent
from shared.events import LeadRoutedV1, LeadScoredV1, parse_payload
from shared.sessions import make_sessions
from shared.topics import LEADS_SCORED
from shared.uow import Transaction, UnitOfWork
from tests.support.polling import eventually
from tests.unit.fakes import FakePublisher, header, messaging_schema

METADATA, MIGRATIONS = messaging_schema()
PARTITION = TopicPartition(LEADS_SCORED, 0)


@dataclass
class RoutingEffect:
    """A handler that routes each scored lead by emitting an event, failing on demand."""

    applied: list[str] = field(default_factory=list)
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    attempts: int = 0

    async def __call__(self, tx: Transaction, event: CloudEvent) -> None:
        self.attempts += 1
        scored = parse_payload(event, LeadScoredV1)
        await tx.emit(_routed(scored.lead_id))
        if self.failures.get(scored.lead_id):
            raise self.failures[scored.lead_id].pop(0)
        self.applied.append(scored.lead_id)


class FakeKafkaConsumer:
    """Records the offsets committed and the positions sought."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.rebalanced = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.rebalanced:
            raise CommitFailedError("the group rebalanced")
        self.commits.append(offsets)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


@dataclass
class Harness:
    consumer: EventConsumer
    effect: RoutingEffect
    dead_letters: FakePublisher
    uow: UnitOfWork
    kafka: FakeKafkaConsumer = field(default_factory=FakeKafkaConsumer)

    async def deliver(self, *records: ConsumerRecord[Any, Any]) -> None:
        await self.consumer._process_partition(self.kafka, PARTITION, list(records))

    async def outbox_size(self) -> int:
        async with self.uow.read() as session:
            return int(await session.scalar(select(func.count()).select_from(METADATA.tables["outbox"])) or 0)


def _routed(lead_id: str) -> LeadRoutedV1:
    return LeadRoutedV1(
        lead_id=lead_id, assignment_id=f"a-{lead_id}", kind="unassigned", reason="r", score=1, routed_at=_AT
    )


_AT = datetime(2024, 5, 1, tzinfo=UTC)


def _record(offset: int, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
    return ConsumerRecord(
        topic=LEADS_SCORED,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def _scored_record(offset: int, lead_id: str, *, event_id: str | None = None) -> Any:
    scored = LeadScoredV1(
        lead_id=lead_id, score=60, verdict="qualified", model_version="rules-v1", contributions=(), scored_at=_AT
    )
    return _record(offset, *scored.to_event(source="/baton/scoring", event_id=event_id).to_kafka())


@pytest.fixture
async def harness(engine: AsyncEngine) -> Harness:
    await migrate(engine, MIGRATIONS, schema="unit")
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/routing")
    effect, dead_letters = RoutingEffect(), FakePublisher()
    consumer = EventConsumer(
        bootstrap_servers="unused:9092",
        group_id="unit",
        topics=[LEADS_SCORED],
        handlers={LeadScoredV1.EVENT_TYPE: effect},
        uow=uow,
        dead_letters=dead_letters,
        max_attempts=3,
    )
    consumer._backoff = 0.0  # the outage pause would otherwise really sleep
    return Harness(consumer, effect, dead_letters, uow)


async def test_events_are_applied_and_the_offset_after_the_last_is_committed(harness: Harness) -> None:
    await harness.deliver(_scored_record(5, "lead-1"), _scored_record(6, "lead-2"))
    assert harness.effect.applied == ["lead-1", "lead-2"]
    assert harness.kafka.commits == [{PARTITION: 7}]
    assert await harness.outbox_size() == 2


async def test_commit_lost_to_a_rebalance_is_survived_and_the_redelivery_changes_nothing(harness: Harness) -> None:
    record = _scored_record(5, "lead-1", event_id="event-1")
    harness.kafka.rebalanced = True
    await harness.deliver(record)  # must not raise: the new owner re-reads from the committed offset

    harness.kafka.rebalanced = False
    await harness.deliver(record)

    assert harness.effect.applied == ["lead-1"]
    assert await harness.outbox_size() == 1
    assert harness.kafka.commits == [{PARTITION: 6}]


async def test_redelivered_event_is_applied_once(harness: Harness) -> None:
    record = _scored_record(5, "lead-1", event_id="event-1")
    await harness.deliver(record)
    await harness.deliver(record)
    assert harness.effect.applied == ["lead-1"]
    assert await harness.outbox_size() == 1
    assert harness.kafka.commits == [{PARTITION: 6}, {PARTITION: 6}]


async def test_malformed_record_is_dead_lettered_with_its_error_and_skipped(harness: Harness) -> None:
    poison = _record(5, b"lead-1", b"not json", [("ce_id", b"e"), ("ce_source", b"s"), ("ce_type", b"t")])
    await harness.deliver(poison, _scored_record(6, "lead-2"))
    [letter] = harness.dead_letters.published
    assert (letter.topic, letter.key, letter.value) == ("leads.scored.dlq", b"lead-1", b"not json")
    assert header(letter.headers, "ce_id") == "e"
    assert header(letter.headers, "baton_error_type") == "InvalidEvent"
    assert "ce_specversion" in header(letter.headers, "baton_error")
    assert header(letter.headers, "baton_original_topic") == LEADS_SCORED
    assert (header(letter.headers, "baton_original_partition"), header(letter.headers, "baton_original_offset")) == (
        "0",
        "5",
    )
    assert harness.effect.applied == ["lead-2"]
    assert harness.kafka.commits == [{PARTITION: 7}]


async def test_payload_failing_validation_is_dead_lettered_without_retries(harness: Harness) -> None:
    event = CloudEvent(type=LeadScoredV1.EVENT_TYPE, source="s", subject="lead-1", data={"score": "high"})
    await harness.deliver(_record(5, *event.to_kafka()))
    assert harness.effect.attempts == 1
    assert header(harness.dead_letters.published[0].headers, "baton_error_type") == "InvalidEvent"
    assert harness.kafka.commits == [{PARTITION: 6}]


async def test_failing_handler_is_retried_then_dead_lettered_leaving_no_effect(harness: Harness) -> None:
    harness.effect.failures["lead-1"] = [ValueError("bug")] * 3
    await harness.deliver(_scored_record(5, "lead-1", event_id="event-1"))
    assert harness.effect.attempts == 3
    assert header(harness.dead_letters.published[0].headers, "baton_error_type") == "ValueError"
    assert await harness.outbox_size() == 0
    assert harness.kafka.commits == [{PARTITION: 6}]


async def test_dead_lettered_event_can_be_replayed_once_fixed(harness: Harness) -> None:
    harness.effect.failures["lead-1"] = [ValueError("bug")] * 3
    await harness.deliver(_scored_record(5, "lead-1", event_id="event-1"))
    await harness.deliver(_scored_record(6, "lead-1", event_id="event-1"))
    assert harness.effect.applied == ["lead-1"]


async def test_handler_that_succeeds_on_retry_is_applied_once(harness: Harness) -> None:
    harness.effect.failures["lead-1"] = [ValueError("flaky")]
    await harness.deliver(_scored_record(5, "lead-1"))
    assert harness.effect.applied == ["lead-1"]
    assert harness.dead_letters.published == []
    assert await harness.outbox_size() == 1


async def test_unknown_event_type_is_skipped_without_a_dead_letter(harness: Harness) -> None:
    event = CloudEvent(type="dev.baton.unknown.v9", source="s", subject="lead-1", data={})
    await harness.deliver(_record(5, *event.to_kafka()))
    assert harness.effect.attempts == 0
    assert harness.dead_letters.published == []
    assert harness.kafka.commits == [{PARTITION: 6}]


async def test_outage_commits_progress_and_rewinds_to_the_failed_record(harness: Harness) -> None:
    harness.effect.failures["lead-2"] = [ConnectionResetError("database gone")]
    await harness.deliver(_scored_record(10, "lead-1"), _scored_record(11, "lead-2"), _scored_record(12, "lead-3"))
    assert harness.effect.attempts == 2
    assert harness.effect.applied == ["lead-1"]
    assert harness.dead_letters.published == []
    assert harness.kafka.commits == [{PARTITION: 11}]
    assert harness.kafka.seeks == [(PARTITION, 11)]


async def test_outage_on_the_first_record_commits_nothing(harness: Harness) -> None:
    harness.effect.failures["lead-1"] = [TimeoutError()]
    await harness.deliver(_scored_record(10, "lead-1"))
    assert harness.kafka.commits == []
    assert harness.kafka.seeks == [(PARTITION, 10)]


async def test_unreachable_dead_letter_topic_is_an_outage(harness: Harness) -> None:
    harness.dead_letters.outages.append(ConnectionRefusedError("broker down"))
    poison = _record(5, b"lead-1", None, [])
    with pytest.raises(Outage):
        await harness.consumer._handle(poison)
    await harness.deliver(poison)
    assert len(harness.dead_letters.published) == 1
    assert harness.kafka.commits == [{PARTITION: 6}]


@dataclass
class RunRecorder:
    """A batched routing effect: notes each run it is given, fails the run holding a lead named in `poison`."""

    runs: list[list[str]] = field(default_factory=list)
    poison: set[str] = field(default_factory=set)

    async def __call__(self, tx: Transaction, events: Sequence[CloudEvent]) -> None:
        leads = [parse_payload(event, LeadScoredV1).lead_id for event in events]
        self.runs.append(leads)
        if self.poison & set(leads):
            raise ValueError(f"cannot route {sorted(self.poison & set(leads))}")
        await tx.emit_all([_routed(lead) for lead in leads])


def _batched_harness(harness: Harness, recorder: RunRecorder) -> EventConsumer:
    consumer = EventConsumer(
        bootstrap_servers="unused:9092", group_id="unit", topics=[LEADS_SCORED],
        handlers={LeadScoredV1.EVENT_TYPE: Batched(recorder)}, uow=harness.uow,
        dead_letters=harness.dead_letters, max_attempts=1,
    )  # fmt: skip
    consumer._backoff = 0.0
    return consumer


def _traced(record: Any, trace_id: str) -> Any:
    record.headers.append(("ce_traceparent", f"00-{trace_id}-{'1' * 16}-01".encode()))
    return record


async def test_a_batched_handler_gets_the_fetch_as_one_run_and_each_lead_keeps_its_trace(harness: Harness) -> None:
    recorder = RunRecorder()
    consumer = _batched_harness(harness, recorder)
    records = [_traced(_scored_record(10 + n, f"lead-{n}"), f"{n + 1:032x}") for n in range(3)]
    duplicate = _scored_record(13, "lead-0", event_id=dict(records[0].headers)["ce_id"].decode())

    assert await consumer._apply_batch(harness.kafka, {PARTITION: [*records, duplicate]})
    await consumer._settle_commit()

    assert recorder.runs == [["lead-0", "lead-1", "lead-2"]]  # the redelivered event is not in the run
    assert harness.kafka.commits == [{PARTITION: 14}]
    async with harness.uow.read() as session:
        rows = (await session.execute(select(METADATA.tables["outbox"]).order_by(METADATA.tables["outbox"].c.id))).all()
    traces = {row.message_key.decode(): dict(row.headers)["ce_traceparent"].split("-")[1] for row in rows}
    assert traces == {f"lead-{n}": f"{n + 1:032x}" for n in range(3)}


class GatedKafkaConsumer(FakeKafkaConsumer):
    """Offset commits wait for the gate to open, like a slow broker."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.gate.wait()
        await super().commit(offsets)


async def test_the_next_batch_is_applied_while_the_last_ones_offsets_are_committed_and_commits_land_in_order(
    harness: Harness,
) -> None:
    recorder = RunRecorder()
    consumer = _batched_harness(harness, recorder)
    kafka = GatedKafkaConsumer()

    assert await consumer._apply_batch(kafka, {PARTITION: [_scored_record(30, "lead-a")]})
    second = asyncio.create_task(consumer._apply_batch(kafka, {PARTITION: [_scored_record(31, "lead-b")]}))
    deadline = time.monotonic() + 5
    while recorder.runs != [["lead-a"], ["lead-b"]]:  # until the second batch is applied; the first commit waits
        assert time.monotonic() < deadline, recorder.runs
        await asyncio.sleep(0.01)  # poll
    assert kafka.commits == []

    kafka.gate.set()
    assert await second
    await consumer._settle_commit()
    assert kafka.commits == [{PARTITION: 31}, {PARTITION: 32}]


async def test_batches_applied_within_the_commit_interval_share_one_commit_of_their_latest_offsets(
    harness: Harness,
) -> None:
    recorder = RunRecorder()
    consumer = _batched_harness(harness, recorder)
    consumer._commit_interval = 60.0

    for offset in (40, 41, 42):
        assert await consumer._apply_batch(harness.kafka, {PARTITION: [_scored_record(offset, f"lead-{offset}")]})
    assert harness.kafka.commits == [{PARTITION: 41}]  # the first at once, the next wait for the interval

    await consumer._settle_commit()  # e.g. at shutdown: what waits is committed at once
    assert harness.kafka.commits == [{PARTITION: 41}, {PARTITION: 43}]


async def test_what_waits_for_the_commit_interval_is_committed_when_it_ends_without_another_batch(
    harness: Harness,
) -> None:
    consumer = _batched_harness(harness, RunRecorder())
    consumer._commit_interval = 0.05

    for offset in (50, 51):
        assert await consumer._apply_batch(harness.kafka, {PARTITION: [_scored_record(offset, f"lead-{offset}")]})
    deadline = time.monotonic() + 5
    while harness.kafka.commits[-1:] != [{PARTITION: 52}]:
        assert time.monotonic() < deadline, harness.kafka.commits
        await asyncio.sleep(0.01)  # poll
    assert harness.kafka.commits == [{PARTITION: 51}, {PARTITION: 52}]


async def test_a_failing_run_falls_back_to_one_event_at_a_time_and_only_the_culprit_is_dead_lettered(
    harness: Harness,
) -> None:
    recorder = RunRecorder(poison={"lead-1"})
    consumer = _batched_harness(harness, recorder)
    records = [_scored_record(20 + n, f"lead-{n}") for n in range(3)]

    assert not await consumer._apply_batch(harness.kafka, {PARTITION: records})
    await consumer._process_partition(harness.kafka, PARTITION, records)

    assert recorder.runs == [["lead-0", "lead-1", "lead-2"], ["lead-0"], ["lead-1"], ["lead-2"]]
    assert [letter.key for letter in harness.dead_letters.published] == [b"lead-1"]
    assert await harness.outbox_size() == 2


def test_runs_break_at_a_change_of_type_and_around_unbatched_handlers() -> None:
    async def single(tx: Transaction, event: CloudEvent) -> None: ...

    batched = Batched(RunRecorder())
    kinds = ["a", "a", "b", "b", "a"]
    work = [(None, CloudEvent(type=kind, source="s", subject=str(n), data={}), batched if kind == "a" else single)
            for n, kind in enumerate(kinds)]  # fmt: skip
    assert [[event.subject for _, event, _ in run] for run in _runs(work)] == [["0", "1"], ["2"], ["3"], ["4"]]


class BrokerGoneKafka:
    """A client whose broker went away after one fetch (`records`): its next fetch fails, and its commits and its
    stop hang, as they did while a restarted broker had no group coordinator yet. Without `records`, a healthy
    client with nothing to fetch."""

    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self.gone = bool(records)
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.records:
            batch, self.records = self.records, []
            return {PARTITION: batch}
        if self.gone:
            raise KafkaConnectionError("the broker went away")
        await asyncio.sleep(0.01)  # poll: a fetch that found nothing
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self._hang_if_gone()

    async def stop(self) -> None:
        await self._hang_if_gone()

    async def _hang_if_gone(self) -> None:
        if self.gone:
            await asyncio.Event().wait()

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    async def position(self, partition: TopicPartition) -> int:
        return 0


def _fake_clients(consumer: EventConsumer, kind: type[BrokerGoneKafka]) -> list[BrokerGoneKafka]:
    """Have `consumer` make its Kafka clients of `kind`: the first fetches one record, the next ones none."""
    clients: list[BrokerGoneKafka] = []

    def new_client() -> Any:
        clients.append(kind([_scored_record(5, "lead-1")] if not clients else []))
        return clients[-1]

    consumer._new_consumer = new_client  # type: ignore[method-assign]
    return clients


def _replaced(clients: list[BrokerGoneKafka]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:  # a second client made and started
        return len(clients) == 2 and clients[1].started

    return probe


async def test_a_client_replaced_after_a_failure_gets_a_short_while_to_commit_and_leave_not_the_broker_timeout(
    harness: Harness,
) -> None:
    consumer = harness.consumer
    consumer._timeout = 30.0  # each hung call would have waited this long
    consumer._replace_seconds = 0.1
    clients = _fake_clients(consumer, BrokerGoneKafka)
    running = asyncio.create_task(consumer.run())
    try:
        await eventually(_replaced(clients), timeout=5, message="a new client replaces the failed one")
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 5)
    assert harness.effect.applied == ["lead-1"]  # applied once; its redelivery would be a no-op (inbox)


class CommitsFailingKafka(BrokerGoneKafka):
    """A client that fetches one record, then nothing, and whose every commit fails."""

    def __init__(self, records: list[Any]) -> None:
        super().__init__(records)
        self.gone = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise KafkaConnectionError("no group coordinator")


async def test_a_client_whose_commits_fail_is_kept_while_the_broker_is_down_and_replaced_once_it_has_answered_a_while(
    harness: Harness,
) -> None:
    consumer = harness.consumer
    consumer._commit_interval = 0.01
    consumer._replace_seconds = 0.1
    consumer._timeout = 0.5  # how long a commit may take: the broker must answer longer than that
    broker = {"answers": False, "asked": 0}

    async def broker_answers() -> bool:
        broker["asked"] += 1
        return bool(broker["answers"])

    consumer._broker_answers = broker_answers
    clients = _fake_clients(consumer, CommitsFailingKafka)
    running = asyncio.create_task(consumer.run())
    try:

        async def failing_while_down() -> bool:  # asked only once commits failed three times in a row
            return broker["asked"] >= 2

        await eventually(failing_while_down, timeout=5, message="commits fail while the broker is down")
        assert len(clients) == 1  # a new client would fail the same: this one keeps its partitions
        broker["answers"] = True
        await eventually(_replaced(clients), timeout=5, message="the client is replaced once the broker answers")
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 5)
