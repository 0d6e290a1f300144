"""W3C trace context: from the HTTP request into the outbox, and from a consumed event into what its handler emits."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import store as intake_store
from services.lead_intake.app import create_app
from services.lead_intake.settings import Settings
from shared.consumer import EventConsumer
from shared.db import migrate
from shared.envelope import CloudEvent
from shared.events import LeadRoutedV1, LeadScoredV1, parse_payload
from shared.logs import JsonFormatter
from shared.sessions import make_sessions
from shared.tables import OUTBOX
from shared.tracing import (
    ContextOnlyTracerProvider,
    batch_spans,
    configure_tracing,
    consume_span,
    install_tracing,
    log_fields,
)
from shared.uow import Transaction, UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running
from tests.unit.fakes import FakePublisher, messaging_schema

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TOPIC = "leads.scored"
PARTITION = TopicPartition(TOPIC, 0)
METADATA, MIGRATIONS = messaging_schema()
_AT = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def tracer_provider() -> None:
    configure_tracing("unit")


def trace_id_of(traceparent: str) -> str:
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1, "sampled"
    return trace_id


def headers_of(row: Any) -> dict[str, str]:
    return {name: value for name, value in row.headers}


class FakeKafkaConsumer:
    """Accepts commits and seeks."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Nothing to remember."""

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Nothing to move."""


async def routes_every_scored_lead(tx: Transaction, event: CloudEvent) -> None:
    """A handler emitting one event, as routing does for each scored lead."""
    scored = parse_payload(event, LeadScoredV1)
    await tx.emit(LeadRoutedV1(lead_id=scored.lead_id, assignment_id="a", kind="unassigned", reason="r", score=1,
                               routed_at=scored.scored_at))  # fmt: skip


def scored_record(offset: int, lead_id: str, trace: list[tuple[str, bytes]]) -> Any:
    scored = LeadScoredV1(
        lead_id=lead_id, score=60, verdict="qualified", model_version="v1", contributions=(), scored_at=_AT
    )
    key, value, headers = scored.to_event(source="/baton/scoring").to_kafka()
    return ConsumerRecord(
        topic=TOPIC, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key, value=value, checksum=None,
        serialized_key_size=len(key), serialized_value_size=len(value), headers=[*headers, *trace],
    )  # fmt: skip


async def outbox_rows(uow: UnitOfWork, metadata: Any) -> list[Any]:
    outbox = metadata.tables[OUTBOX]
    async with uow.read() as session:
        return list((await session.execute(select(outbox).order_by(outbox.c.id))).all())


# --- HTTP -> outbox ------------------------------------------------------------------------------------------------


async def test_request_traceparent_reaches_the_outbox_rows_headers(tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with running(create_app, offline_settings(Settings, tmp_path)) as (app, client):
        answer = await client.post(
            "/v1/leads", json={"email": "ada@acme.example"}, headers={**admin, "traceparent": TRACEPARENT}
        )
        assert answer.status_code == 202, answer.text
        untraced = await client.post("/v1/leads", json={"email": "ken@firm.example"}, headers=admin)
        assert untraced.status_code == 202, untraced.text
        first, second = await outbox_rows(app.state.runtime.uow, intake_store.metadata)

    assert trace_id_of(headers_of(first)["ce_traceparent"]) == TRACE_ID
    assert headers_of(first)["ce_traceparent"] != TRACEPARENT  # a child span of the caller's, same trace
    assert trace_id_of(headers_of(second)["ce_traceparent"]) not in (TRACE_ID, "0" * 32)  # a trace of its own


async def test_logs_in_a_request_carry_its_trace_id_and_the_paths_lead_id() -> None:
    app = FastAPI()
    install_tracing(app, "unit")

    @app.get("/leads/{lead_id}")
    async def fields(lead_id: str) -> dict[str, str]:
        return log_fields()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://unit") as client:
        answer = await client.get("/leads/lead-7", headers={"traceparent": TRACEPARENT})

    assert answer.json() == {"trace_id": TRACE_ID, "lead_id": "lead-7"}


# --- Kafka -> handler -> outbox --------------------------------------------------------------------------------------


@pytest.fixture
async def consumer_uow(engine: AsyncEngine) -> UnitOfWork:
    await migrate(engine, MIGRATIONS, schema="unit")
    return UnitOfWork(make_sessions(engine), METADATA, source="/baton/routing")


def routing_consumer(uow: UnitOfWork) -> EventConsumer:
    return EventConsumer(
        bootstrap_servers="unused:9092", group_id="unit", topics=[TOPIC],
        handlers={LeadScoredV1.EVENT_TYPE: routes_every_scored_lead}, uow=uow, dead_letters=FakePublisher(),
    )  # fmt: skip


async def test_consumed_events_trace_continues_in_the_events_its_handler_emits(consumer_uow: UnitOfWork) -> None:
    records = [
        scored_record(0, "lead-1", [("ce_traceparent", TRACEPARENT.encode())]),
        scored_record(1, "lead-2", [("traceparent", TRACEPARENT.replace(TRACE_ID, "1" * 32).encode())]),
        scored_record(2, "lead-3", []),
    ]
    await routing_consumer(consumer_uow)._process_partition(FakeKafkaConsumer(), PARTITION, records)

    traced, plain, untraced = [headers_of(row) for row in await outbox_rows(consumer_uow, METADATA)]
    assert trace_id_of(traced["ce_traceparent"]) == TRACE_ID
    assert trace_id_of(plain["ce_traceparent"]) == "1" * 32  # OpenTelemetry's own Kafka header is honoured too
    assert trace_id_of(untraced["ce_traceparent"]) not in (TRACE_ID, "1" * 32)  # a new trace starts here


async def test_a_batch_applies_each_event_in_its_own_trace(consumer_uow: UnitOfWork) -> None:
    other = TRACEPARENT.replace(TRACE_ID, "2" * 32)
    batch = {
        PARTITION: [
            scored_record(0, "lead-1", [("ce_traceparent", TRACEPARENT.encode())]),
            scored_record(1, "lead-2", [("ce_traceparent", other.encode()), ("ce_tracestate", b"vendor=x")]),
        ]
    }
    assert await routing_consumer(consumer_uow)._apply_batch(FakeKafkaConsumer(), batch)

    first, second = [headers_of(row) for row in await outbox_rows(consumer_uow, METADATA)]
    assert trace_id_of(first["ce_traceparent"]) == TRACE_ID
    assert trace_id_of(second["ce_traceparent"]) == "2" * 32
    assert second["ce_tracestate"] == "vendor=x"


def test_json_logs_name_the_trace_and_the_lead_while_an_event_is_applied() -> None:
    event = CloudEvent(type="t", source="s", subject="lead-5", data={})
    formatter = JsonFormatter("routing")
    record = logging.LogRecord("unit", logging.INFO, __file__, 1, "routing", None, None)

    with consume_span(TOPIC, [("ce_traceparent", TRACEPARENT.encode())], event):
        inside = orjson.loads(formatter.format(record))
    outside = orjson.loads(formatter.format(record))

    assert (inside["trace_id"], inside["lead_id"]) == (TRACE_ID, "lead-5")
    assert "trace_id" not in outside and "lead_id" not in outside


def test_without_an_exporter_spans_carry_the_parents_trace_under_a_new_span_id_and_record_nothing() -> None:
    assert isinstance(trace.get_tracer_provider(), ContextOnlyTracerProvider)  # no OTEL_EXPORTER_OTLP_ENDPOINT here
    tracer = trace.get_tracer("test")
    parent = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    with tracer.start_as_current_span("child", context=parent) as span:
        context = span.get_span_context()
        assert not span.is_recording()
        assert format(context.trace_id, "032x") == TRACE_ID
        assert format(context.span_id, "016x") not in ("00f067aa0ba902b7", "0" * 16)
        assert (context.trace_flags.sampled, context.trace_state.get("vendor")) == (True, "1")
        assert log_fields()["trace_id"] == TRACE_ID
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        assert carrier["traceparent"] == f"00-{TRACE_ID}-{context.span_id:016x}-01"
    unsampled = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT[:-2] + "00"})
    assert not tracer.start_span("child", context=unsampled).get_span_context().trace_flags.sampled
    first, second = (tracer.start_span("root").get_span_context() for _ in range(2))
    assert first.is_valid and first.trace_flags.sampled and first.trace_id != second.trace_id


def spans_headers(headers: list[tuple[str, bytes | None]]) -> dict[str, str]:
    """What a span started the general way (extract, start a span, inject) would put in the outbox headers."""
    event = CloudEvent(type="t", source="s", subject="lead-1", data={})
    parent = TraceContextTextMapPropagator().extract(
        {TRACE_NAMES[name]: raw.decode() for name, raw in headers if raw is not None and name in TRACE_NAMES}
    )
    carrier: dict[str, str] = {}
    span = trace.get_tracer("test").start_span("general", context=parent)
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    with batch_spans(TOPIC, [(headers, event)]) as by_subject:
        batched = dict(by_subject["lead-1"])
    assert set(batched) == {f"ce_{name}" for name in carrier}
    return {"general": carrier["traceparent"], "batched": batched["ce_traceparent"]}


TRACE_NAMES = {"ce_traceparent": "traceparent", "ce_tracestate": "tracestate", "traceparent": "traceparent"}
PARENT_SPAN = TRACEPARENT.split("-")[2]


@pytest.mark.parametrize(
    ("headers", "continues"),
    [
        ([("ce_traceparent", TRACEPARENT.encode())], True),
        ([("ce_traceparent", TRACEPARENT[:-2].encode() + b"00")], True),  # not sampled: stays so
        ([("traceparent", TRACEPARENT.encode())], True),
        ([("ce_traceparent", f" {TRACEPARENT}\t".encode())], True),
        ([("ce_traceparent", TRACEPARENT.encode()), ("ce_tracestate", b"vendor=x,other=y")], True),
        ([("ce_traceparent", b"01" + TRACEPARENT[2:].encode() + b"-future")], True),
        ([], False),
        ([("ce_traceparent", None)], False),
        ([("ce_traceparent", b"garbage")], False),
        ([("ce_traceparent", TRACEPARENT.upper().encode())], False),
        ([("ce_traceparent", TRACEPARENT.replace(TRACE_ID, "0" * 32).encode())], False),
        ([("ce_traceparent", TRACEPARENT.replace(PARENT_SPAN, "0" * 16).encode())], False),
        ([("ce_traceparent", b"ff" + TRACEPARENT[2:].encode())], False),
        ([("ce_traceparent", TRACEPARENT.encode() + b"-extra")], False),  # version 00 has four fields
        ([("ce_traceparent", TRACEPARENT.encode() + b" " * 500)], False),  # over 512 characters
        ([("ce_traceparent", b"garbage"), ("ce_tracestate", b"vendor=x")], False),
    ],
)
def test_a_batchs_trace_headers_are_those_a_span_would_carry(
    headers: list[tuple[str, bytes | None]], continues: bool
) -> None:
    found = spans_headers(headers)
    general, batched = found["general"].split("-"), found["batched"].split("-")
    assert batched[0] == general[0] == "00"
    assert batched[3] == general[3]
    assert re.fullmatch("[0-9a-f]{16}", batched[2]) and batched[2] not in (PARENT_SPAN, "0" * 16)
    if continues:
        assert batched[1] == general[1]
    else:  # a new trace, each its own
        assert re.fullmatch("[0-9a-f]{32}", batched[1]) and batched[1] not in (general[1], TRACE_ID, "0" * 32)
