"""Feedback applies a fetched batch run by run: exactly what applying its events one by one, in order, would do."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from sqlalchemy import Table, select
from sqlalchemy import event as sql_event
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feedback import store
from services.feedback.aggregates import METRICS, CellSums, LeadCard, add_change, contributions
from services.feedback.handlers import HANDLERS
from shared.consumer import Batched, EventConsumer
from shared.db import make_engine
from shared.envelope import CloudEvent
from shared.events import (
    PAYLOAD_TYPES,
    ActivityRecordedV1,
    EventPayload,
    LeadCapturedV1,
    LeadErasedV1,
    LeadMergedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
)
from shared.privacy import ERASED_LEADS
from shared.topics import LEADS_OUTCOMES
from shared.uow import UnitOfWork
from tests.unit.fakes import FakePublisher, migrated_unit_of_work

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
REPS = ("rep-a", "rep-b", "rep-c")


class FakeKafka:
    """What the consumer asks of Kafka when it applies a fetch: offset commits."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        raise AssertionError(f"no outage expected, yet asked to rewind {partition} to {offset}")


def _outcome(lead_id: str, kind: str, at: datetime) -> OutcomeRecordedV1:
    return OutcomeRecordedV1(
        lead_id=lead_id, outcome_id=str(uuid.uuid4()), kind=kind, occurred_at=at, rep_id="rep-a",
        amount=Decimal("1250.50") if kind == "won" else None, currency="EUR" if kind == "won" else None,
        reason="budget" if kind == "lost" else None, competitor="HubSpot" if kind == "lost" else None,
    )  # fmt: skip


def _journey(chance: random.Random, lead_id: str) -> list[EventPayload]:
    """One lead's life from every service: re-scores, reassignments, SLA misses, outcomes (some impossible)."""
    at = T0 + timedelta(days=chance.randrange(45), minutes=chance.randrange(900))
    captured = LeadCapturedV1(
        lead_id=lead_id, email=f"{lead_id}@acme.example", captured_at=at, utm_source=chance.choice(["ads", "seo"]),
        utm_campaign=chance.choice(["spring", "retarget", None]), country=chance.choice(["JP", "DE", None]),
        interests=tuple(chance.sample(["crm", "ai", "sla"], chance.randrange(3))),
        current_solution=chance.choice(["Salesforce", None]),
    )  # fmt: skip
    events: list[EventPayload] = [captured]
    if chance.random() < 0.3:
        events.append(LeadMergedV1(**{**captured.model_dump(), "utm_campaign": "webinar", "interests": ("ai",)},
                                   merged_at=at + timedelta(hours=2)))  # fmt: skip
    for number in range(chance.choice([1, 1, 2, 3])):  # re-scored: the band and prediction move
        score = chance.randrange(101)
        events.append(LeadScoredV1(lead_id=lead_id, score=score, verdict="qualified" if score >= 50 else "nurture",
                                   model_version="1", contributions=(), scored_at=at + timedelta(minutes=number),
                                   grade=chance.choice("ABC") + "1", learned_probability=chance.random()))  # fmt: skip
    rep = chance.choice(REPS)
    routed = at + timedelta(seconds=chance.choice([0.3, 4, 45, 900]))
    events.append(LeadRoutedV1(lead_id=lead_id, assignment_id="a1", kind="assigned", rep_id=rep, reason="r",
                               score=1, routed_at=routed, team="apac"))  # fmt: skip
    if chance.random() < 0.5:
        other = chance.choice([name for name in REPS if name != rep])
        events += [
            LeadRoutedV1(lead_id=lead_id, assignment_id="a1", kind="sla_breached", rep_id=rep, previous_rep_id=rep,
                         reason="missed", score=1, routed_at=routed + timedelta(minutes=5)),
            LeadRoutedV1(lead_id=lead_id, assignment_id="a2", kind="reassigned", rep_id=other, reason="r",
                         score=1, routed_at=routed + timedelta(minutes=6), team="emea"),
        ]  # fmt: skip
    if chance.random() < 0.5:
        events.append(LeadRoutedV1(lead_id=lead_id, assignment_id="a3", kind="accepted", rep_id=rep, reason="ok",
                                   score=1, routed_at=routed + timedelta(minutes=9)))  # fmt: skip
    events.append(ActivityRecordedV1(lead_id=lead_id, activity_id=str(uuid.uuid4()), kind="page_view",
                                     occurred_at=at + timedelta(hours=1), url="https://acme.example/"))  # fmt: skip
    kinds = chance.choice([(), ("accepted", "qualified", "won"), ("lost", "won"), ("lost", "recycled", "accepted"),
                           ("won", "reopened", "lost")])  # fmt: skip
    events += [_outcome(lead_id, kind, routed + timedelta(hours=number + 1)) for number, kind in enumerate(kinds)]
    if chance.random() < 0.1:
        events.append(LeadErasedV1(lead_id=lead_id, erased_at=at + timedelta(days=1)))
    return events


def _topic_streams(chance: random.Random, leads: int) -> list[CloudEvent]:
    """Every lead's events, each topic in the lead's order but the topics interleaved at random (an erasure may come
    before the capture); a fifth of the leads have their outcomes and erasure arrive before anything else about them,
    and a few leads are never heard of but through outcomes (those stay held)."""
    queues: dict[str, list[EventPayload]] = defaultdict(list)
    early: list[EventPayload] = []
    for number in range(leads):
        ahead = chance.random() < 0.2
        for payload in _journey(chance, f"lead-{number:03d}"):
            goes_first = ahead and isinstance(payload, OutcomeRecordedV1 | LeadErasedV1)
            (early if goes_first else queues[payload.TOPIC]).append(payload)
    for number in range(3):
        lead_id = f"unknown-{number}"
        queues[LEADS_OUTCOMES] += [_outcome(lead_id, "accepted", T0), _outcome(lead_id, "lost", T0 + timedelta(days=1))]
    stream = [payload.to_event(source="/baton/test") for payload in early]
    while any(queues.values()):
        topic = chance.choice([name for name, queue in queues.items() if queue])
        for _ in range(chance.randrange(1, 12)):
            if queues[topic]:
                stream.append(queues[topic].pop(0).to_event(source="/baton/test"))
    return stream


def _fetches(stream: Sequence[CloudEvent], size: int) -> list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]:
    """The stream as the consumer would fetch it: `size` records at a time, one partition per topic."""
    fetches: list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]] = []
    for start in range(0, len(stream), size):
        fetch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for offset, event in enumerate(stream[start : start + size], start=start):
            key, value, headers = event.to_kafka()
            topic = _topic_of(event)
            record = ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key or b""), len(value), headers)
            fetch.setdefault(TopicPartition(topic, 0), []).append(record)
        fetches.append(fetch)
    return fetches


def _topic_of(event: CloudEvent) -> str:
    return PAYLOAD_TYPES[event.type].TOPIC


def _applied_order(fetches: Sequence[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]) -> list[CloudEvent]:
    """The order in which the consumer applies the fetches' events (each fetch grouped by topic)."""
    order: list[CloudEvent] = []
    for fetch in fetches:
        records = sorted((record for records in fetch.values() for record in records), key=lambda r: r.topic)
        order += [CloudEvent.from_kafka(record.key, record.value, record.headers) for record in records]
    return order


Databases = Callable[[str], Awaitable[UnitOfWork]]


@pytest.fixture
async def databases(tmp_path: Path) -> AsyncIterator[Databases]:
    """Opens feedback databases by name, each a fresh SQLite file, all closed after the test."""
    engines: list[AsyncEngine] = []

    async def open_database(name: str) -> UnitOfWork:
        engines.append(make_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db", schema="feedback"))
        return await migrated_unit_of_work(engines[-1], store.metadata, store.MIGRATIONS, service="feedback")

    yield open_database
    for engine in engines:
        await engine.dispose()


async def _one_by_one(uow: UnitOfWork, events: Sequence[CloudEvent]) -> None:
    for event in events:
        async with uow.transaction() as tx:
            assert await tx.mark_processed(event.id, topic=_topic_of(event))
            await HANDLERS[event.type](tx, event)


async def _rows(uow: UnitOfWork, table: Table, *order: str) -> list[dict[str, Any]]:
    async with uow.read() as session:
        query = select(table).order_by(*(table.c[name] for name in order))
        return [dict(row) for row in (await session.execute(query)).mappings()]


def _same_cells(got: list[dict[str, Any]], want: list[dict[str, Any]], period: str) -> None:
    """The same cells with the same totals; a cell at zero counts as none (a batch moves each card's cells once,
    from the card loaded to the card left, so a cell its events move and bring back is not written; one by one
    writes it, at zero, and reports show no row for it either way)."""
    got, want = _not_zero(got), _not_zero(want)
    keys = (period, "dimension", "value")
    assert [[row[key] for key in keys] for row in got] == [[row[key] for key in keys] for row in want]
    for mine, theirs in zip(got, want, strict=True):
        for metric in METRICS:
            assert float(mine[metric]) == pytest.approx(float(theirs[metric]), abs=1e-9), (mine, metric)


def _not_zero(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [cell for cell in cells if any(cell[metric] for metric in METRICS)]


async def _assert_cells_equal_a_full_scan(uow: UnitOfWork) -> None:
    cards = [store.card_from_row(row) for row in await _rows(uow, store.lead_cards, "lead_id")]
    expected: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for card in cards:
        for (dimension, value), amounts in contributions(card).items():
            for metric, amount in amounts.items():
                expected[(card.day, dimension, value)][metric] += float(amount)
    stored = {(row["day"], row["dimension"], row["value"]): row for row in await _rows(uow, store.report_cells, "day")}
    for key in set(expected) | set(stored):
        for metric in METRICS:
            got = float(stored[key][metric]) if key in stored else 0.0
            # Amounts are stored to four decimals (Numeric(20, 4)); counts exactly.
            assert got == pytest.approx(expected.get(key, {}).get(metric, 0.0), abs=1e-3), (key, metric)


@pytest.mark.parametrize(("seed", "fetch_size"), [(3, 40), (8, 250)])
async def test_a_batch_applied_run_by_run_equals_its_events_applied_one_by_one(
    databases: Databases, seed: int, fetch_size: int
) -> None:
    await check_run_by_run_equals_one_by_one(databases, seed, fetch_size)


async def check_run_by_run_equals_one_by_one(
    databases: Databases, seed: int, fetch_size: int, *, same_database_kind: bool = True
) -> None:
    """A random stream of 60 leads' events, fetched `fetch_size` records at a time and applied run by run, stores
    what applying its events one by one does (also run on PostgreSQL by the integration tests). Report cells are
    compared between databases of one kind only: PostgreSQL and SQLite round their sums differently."""
    stream = _topic_streams(random.Random(seed), leads=60)
    fetches = _fetches(stream, fetch_size)
    one_by_one, batched = await databases("one_by_one"), await databases("run_by_run")
    await _one_by_one(one_by_one, _applied_order(fetches))
    consumer = EventConsumer(bootstrap_servers="unused:9092", group_id="unit", topics=[], handlers=HANDLERS,
                             uow=batched, dead_letters=FakePublisher())  # fmt: skip
    kafka = FakeKafka()
    for fetch in fetches:
        assert await consumer._apply_batch(kafka, fetch)
    await consumer._settle_commit()
    committed: dict[Any, int] = {}
    for offsets in kafka.commits:  # batches share commits: the last one names every partition's latest offset
        committed.update(offsets)
    assert committed == {partition: records[-1].offset + 1 for fetch in fetches for partition, records in fetch.items()}

    for table, order in ((store.lead_cards, "lead_id"), (store.timeline, "id")):
        assert await _rows(batched, table, order) == await _rows(one_by_one, table, order), table.name
    erased = store.metadata.tables[ERASED_LEADS]
    assert [row["lead_id"] for row in await _rows(batched, erased, "lead_id")] == [
        row["lead_id"] for row in await _rows(one_by_one, erased, "lead_id")]  # fmt: skip
    held = [(row["outcome_id"], row["event"]) for row in await _rows(batched, store.pending_outcomes, "received_at")]
    assert len(held) == 6 and held == [(row["outcome_id"], row["event"])
                    for row in await _rows(one_by_one, store.pending_outcomes, "received_at")]  # fmt: skip
    for table, key in ((store.report_cells, "day"), (store.report_cells_monthly, "month")):
        if same_database_kind:
            _same_cells(await _rows(batched, table, key, "dimension", "value"),
                        await _rows(one_by_one, table, key, "dimension", "value"), key)  # fmt: skip
    await _assert_cells_equal_a_full_scan(batched)
    journeys = await _rows(batched, store.timeline, "id")
    assert {"captured", "merged", "scored", "sla_missed", "reassigned", "outcome_rejected"} <= {
        row["step"] for row in journeys}  # fmt: skip
    assert any(row["event_id"].startswith("pending:") for row in journeys)  # outcomes held, applied on capture
    assert any(row["reason"].startswith("captured [erased]") for row in journeys)


async def test_a_batch_moves_each_month_cell_by_the_sum_of_its_days_cells(databases: Databases) -> None:
    # Cards captured on five days of two months, in one batch: each month's cell holds what its days' cells hold.
    uow = await databases("cells")
    cards = [LeadCard(lead_id=f"lead-{n}", captured_at=T0 + timedelta(days=12 * n), country=("JP", "DE")[n % 2],
                      won_amount=Decimal("10.5") * n, state="won" if n % 2 else "open") for n in range(5)]  # fmt: skip
    async with uow.transaction() as tx:
        sums: CellSums = {}
        for card in cards:
            add_change(sums, None, card)
        await store.add_cell_sums(tx.session, sums)
    days: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in await _rows(uow, store.report_cells, "day", "dimension", "value"):
        for metric in METRICS:
            days[(row["day"][:7], row["dimension"], row["value"])][metric] += float(row[metric])
    months = {(row["month"], row["dimension"], row["value"]): {metric: float(row[metric]) for metric in METRICS}
              for row in await _rows(uow, store.report_cells_monthly, "month", "dimension", "value")}  # fmt: skip
    assert months == days
    assert (months[("2026-03", "all", "all")]["captured"], months[("2026-04", "all", "all")]["captured"]) == (3, 2)
    assert months[("2026-04", "country", "DE")]["won_amount"] == 31.5  # lead-3, captured on 2026-04-07


async def test_a_run_folds_the_events_of_one_lead_in_order(databases: Databases) -> None:
    """Assigned, missed, reassigned and accepted in one run: the card ends with the second rep, the first rep's cell
    is touched and ends at zero (one by one would have created it too), the miss counts against the first rep."""
    uow = await databases("run")
    await _one_by_one(uow, [LeadCapturedV1(lead_id="lead-1", email="a@acme.example", captured_at=T0)
                            .to_event(source="/baton/test")])  # fmt: skip
    routed = [
        LeadRoutedV1(lead_id="lead-1", assignment_id="a1", kind="assigned", rep_id="rep-a", reason="r", score=1,
                     routed_at=T0 + timedelta(seconds=3)),
        LeadRoutedV1(lead_id="lead-1", assignment_id="a1", kind="sla_breached", rep_id="rep-a",
                     previous_rep_id="rep-a", reason="missed", score=1, routed_at=T0 + timedelta(minutes=5)),
        LeadRoutedV1(lead_id="lead-1", assignment_id="a2", kind="reassigned", rep_id="rep-b", reason="r", score=1,
                     routed_at=T0 + timedelta(minutes=6)),
        LeadRoutedV1(lead_id="lead-1", assignment_id="a2", kind="accepted", rep_id="rep-b", reason="ok", score=1,
                     routed_at=T0 + timedelta(minutes=9)),
    ]  # fmt: skip
    handler = HANDLERS[LeadRoutedV1.EVENT_TYPE]
    assert isinstance(handler, Batched)
    async with uow.transaction() as tx:
        await handler.apply_run(tx, [payload.to_event(source="/baton/test") for payload in routed])

    async with uow.read() as session:
        card = await store.load_card(session, lead_id="lead-1")
    assert card is not None
    assert (card.rep_id, card.sla_missed_by, card.sla_met, card.assigned_at) == ("rep-b", ("rep-a",), False,
                                                                               T0 + timedelta(seconds=3))  # fmt: skip
    cells = {row["value"]: row for row in await _rows(uow, store.report_cells, "value") if row["dimension"] == "rep"}
    assert (cells["rep-a"]["captured"], cells["rep-a"]["sla_missed"]) == (0, 1)
    assert (cells["rep-b"]["captured"], cells["rep-b"]["touched"], cells["rep-b"]["sla_missed"]) == (1, 1, 0)
    assert cells["(none)"]["captured"] == 0
    steps = [row["step"] for row in await _rows(uow, store.timeline, "id")]
    assert steps == ["captured", "routed", "sla_missed", "reassigned", "accepted_by_rep"]
    await _assert_cells_equal_a_full_scan(uow)


async def test_a_batch_reads_and_writes_each_card_once_across_its_runs(databases: Databases) -> None:
    """Leads captured, scored and routed in one fetch: three runs, one read of their cards and one insert of them
    (no update), and each cell moved once, from no card to the card as routed (no '(none)' rep cell at zero)."""
    uow = await databases("once")
    payloads: list[EventPayload] = []
    for number in range(5):
        lead_id = f"lead-{number}"
        payloads += [
            LeadCapturedV1(lead_id=lead_id, email=f"{lead_id}@acme.example", captured_at=T0),
            LeadScoredV1(lead_id=lead_id, score=70, verdict="qualified", model_version="1", contributions=(),
                         scored_at=T0 + timedelta(seconds=1), grade="A1"),
            LeadRoutedV1(lead_id=lead_id, assignment_id=f"a-{number}", kind="assigned", rep_id="rep-a", reason="r",
                         score=70, routed_at=T0 + timedelta(seconds=2)),
        ]  # fmt: skip
    [fetch] = _fetches([payload.to_event(source="/baton/test") for payload in payloads], size=len(payloads))
    async with uow.read() as session:
        engine = session.get_bind()
    card_statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "lead_cards" in statement:
            card_statements.append(statement.split(None, 1)[0].upper())

    sql_event.listen(engine, "before_cursor_execute", seen)
    try:
        consumer = EventConsumer(bootstrap_servers="unused:9092", group_id="unit", topics=[], handlers=HANDLERS,
                                 uow=uow, dead_letters=FakePublisher())  # fmt: skip
        assert await consumer._apply_batch(FakeKafka(), fetch)
    finally:
        sql_event.remove(engine, "before_cursor_execute", seen)

    assert card_statements == ["SELECT", "INSERT"]
    cards = [store.card_from_row(row) for row in await _rows(uow, store.lead_cards, "lead_id")]
    assert [(card.rep_id, card.grade, card.qualified_at is not None) for card in cards] == [("rep-a", "A1", True)] * 5
    cells = {(row["dimension"], row["value"]): row for row in await _rows(uow, store.report_cells, "day")}
    assert (cells[("all", "all")]["captured"], cells[("all", "all")]["mql"]) == (5, 5)
    assert cells[("rep", "rep-a")]["assigned"] == 5 and ("rep", "(none)") not in cells
    await _assert_cells_equal_a_full_scan(uow)
