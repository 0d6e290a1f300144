"""One lead is one trace: a traceparent posted to lead_intake comes out on scoring's and routing's events, over the
real broker and PostgreSQL with the services as processes; their /metrics show the hops."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from shared.topics import LEADS_CAPTURED, LEADS_ROUTED, LEADS_SCORED
from tests.support.infra import KafkaBroker, PostgresServer
from tests.support.kafka_reader import header, read_topic
from tests.support.polling import eventually
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

PIPELINE = ("lead_intake", "scoring", "routing")
TRACE_ID = uuid.uuid4().hex
TRACEPARENT = f"00-{TRACE_ID}-{uuid.uuid4().hex[:16]}-01"


@pytest.fixture(scope="module")
def pipeline(kafka: KafkaBroker, postgres: PostgresServer, run_dir: Path) -> Iterator[Stack]:
    """lead_intake, scoring and routing as processes on a fresh database."""
    stack = Stack.create(
        bootstrap_servers=kafka.bootstrap_servers,
        database_url=postgres.create_database("baton_trace"),
        log_dir=run_dir / "trace-logs",
        group_suffix="trace",
    )
    try:
        for name in PIPELINE:
            stack[name].start()
        for name in PIPELINE:
            stack[name].wait_ready()
        yield stack
    finally:
        for name in PIPELINE:
            stack[name].stop()


def trace_id(record: ConsumerRecord[Any, Any]) -> str | None:
    traceparent = header(record, "ce_traceparent")
    return traceparent.split("-")[1] if traceparent else None


async def records_of(stack: Stack, topic: str, lead_id: str) -> list[ConsumerRecord[Any, Any]]:
    def of_lead(records: list[ConsumerRecord[Any, Any]]) -> list[ConsumerRecord[Any, Any]]:
        return [record for record in records if record.key == lead_id.encode()]

    found = await read_topic(
        stack["lead_intake"].env["KAFKA_BOOTSTRAP_SERVERS"],
        topic,
        until=lambda records: bool(of_lead(records)),
        timeout=90,
    )
    return of_lead(found)


async def post_lead(stack: Stack, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=stack["lead_intake"].url, headers=stack.headers) as client:
        answer = await client.post(
            "/v1/leads",
            json={"email": f"trace.{uuid.uuid4().hex[:8]}@acme.example", "company": "Acme", "country": "JP"},
            headers=headers,
        )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["lead_id"])


async def test_one_lead_posted_with_a_traceparent_is_one_trace_through_scoring_and_routing(pipeline: Stack) -> None:
    lead_id = await post_lead(pipeline, {"traceparent": TRACEPARENT})

    # The first hops wait on the consumer groups joining (a restarted group waits out its old members' sessions).
    hops = {topic: await records_of(pipeline, topic, lead_id) for topic in (LEADS_CAPTURED, LEADS_SCORED, LEADS_ROUTED)}

    for topic, records in hops.items():
        assert records, f"nothing for {lead_id} on {topic}"
        assert {trace_id(record) for record in records} == {TRACE_ID}, topic
    # Each hop is a child of the one before: the same trace, a new span.
    spans = {header(records[0], "ce_traceparent") for records in hops.values()}
    assert len(spans) == 3 and TRACEPARENT not in spans


async def test_metrics_show_each_hop(pipeline: Stack) -> None:
    await post_lead(pipeline, {})

    async def shows(name: str, sample: str, **labels: str) -> bool:
        async with httpx.AsyncClient(base_url=pipeline[name].url) as client:
            answer = await client.get("/metrics")  # no key: open like /healthz
        assert answer.status_code == 200
        return any(
            found.name == sample and labels.items() <= found.labels.items() and found.value > 0
            for family in text_string_to_metric_families(answer.text)
            for found in family.samples
        )

    expected = [
        ("lead_intake", "baton_http_request_duration_seconds_count", {"method": "POST", "route": "/v1/leads"}),
        ("lead_intake", "baton_events_produced_total", {"topic": LEADS_CAPTURED}),
        ("scoring", "baton_events_consumed_total", {"topic": LEADS_CAPTURED, "outcome": "applied"}),
        ("scoring", "baton_events_produced_total", {"topic": LEADS_SCORED}),
        ("routing", "baton_events_consumed_total", {"topic": LEADS_SCORED, "outcome": "applied"}),
        ("routing", "baton_events_produced_total", {"topic": LEADS_ROUTED}),
    ]
    for name, sample, labels in expected:
        await eventually(partial(shows, name, sample, **labels), message=f"{name}: {sample} {labels}", timeout=90)
