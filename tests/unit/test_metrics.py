"""Prometheus metrics: `/metrics` on a running app, and each figure recorded where the work happens."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring.app import create_app
from services.scoring.settings import Settings
from shared.consumer import EventConsumer
from shared.db import migrate
from shared.envelope import CloudEvent
from shared.events import LeadRoutedV1
from shared.metrics import (
    ServiceMetrics,
    count_sla_miss,
    metrics_context,
    observe_speed_to_lead,
    sample_consumer_lag,
    sample_outbox_backlog,
)
from shared.sessions import make_sessions
from shared.tables import OUTBOX
from shared.uow import Transaction, UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running
from tests.unit.fakes import FakePublisher, messaging_schema

T = TypeVar("T")
TOPIC = "leads.scored"
PARTITION = TopicPartition(TOPIC, 0)
METADATA, MIGRATIONS = messaging_schema()
AT = datetime(2024, 5, 1, tzinfo=UTC)


def samples(exposition: str | bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(exposition: str | bytes, name: str, **labels: str) -> float | None:
    return samples(exposition).get((name, frozenset(labels.items())))


async def recording(metrics: ServiceMetrics, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` as the runtime runs its tasks: with `metrics` current."""
    return await asyncio.create_task(work, context=metrics_context(metrics))


class FakeKafkaConsumer:
    """Accepts commits and seeks; reports a highwater and a position per partition."""

    def __init__(self, highwater: int | None = None, position: int = 0) -> None:
        self._highwater = highwater
        self._position = position

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Nothing to remember."""

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Nothing to move."""

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._highwater

    async def position(self, partition: TopicPartition) -> int:
        return self._position


def record(offset: int, event: CloudEvent) -> Any:
    key, value_, headers = event.to_kafka()
    return ConsumerRecord(
        topic=TOPIC, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key, value=value_,
        checksum=None, serialized_key_size=len(key), serialized_value_size=len(value_), headers=headers,
    )  # fmt: skip


def noticed(lead_id: str, event_id: str | None = None) -> CloudEvent:
    return CloudEvent(
        type="test.noticed", source="/test", subject=lead_id, data={"lead_id": lead_id}, id=event_id or lead_id
    )


def consumer_over(uow: UnitOfWork, handler: Any) -> EventConsumer:
    consumer = EventConsumer(
        bootstrap_servers="unused:9092", group_id="unit", topics=[TOPIC], handlers={"test.noticed": handler},
        uow=uow, dead_letters=FakePublisher(), max_attempts=2,
    )  # fmt: skip
    consumer._backoff = 0.0
    return consumer


async def nothing(tx: Transaction, event: CloudEvent) -> None:
    """A handler with no effect but its inbox row."""


async def test_metrics_answer_with_request_latency_by_route_template_and_consumed_events(tmp_path: Path) -> None:
    async with running(create_app, offline_settings(Settings, tmp_path)) as (app, client):
        assert (await client.get("/healthz")).status_code == 200
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert (await client.get("/v1/scores/lead-42", headers=admin)).status_code == 404
        runtime = app.state.runtime
        consumer = consumer_over(runtime.uow, nothing)
        await recording(
            runtime.metrics, consumer._process_partition(FakeKafkaConsumer(), PARTITION, [record(0, noticed("lead-1"))])
        )

        answer = await client.get("/metrics")  # open, like /healthz: no key

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    ok = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(text, "baton_http_request_duration_seconds_count", **ok) == 1
    missing = {"method": "GET", "route": "/v1/scores/{lead_id}", "status": "404"}
    assert value(text, "baton_http_request_duration_seconds_count", **missing) == 1
    assert "lead-42" not in text  # the template, never the raw path
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="applied") == 1
    for name in (
        "baton_outbox_unsent_rows",
        "baton_outbox_oldest_unsent_age_seconds",
        "baton_sla_misses_total",
        "baton_consumer_restarts_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


async def test_two_apps_in_one_process_keep_their_own_registries(tmp_path: Path) -> None:
    async with (
        running(create_app, offline_settings(Settings, tmp_path / "a")) as (_, first),
        running(create_app, offline_settings(Settings, tmp_path / "b")) as (_, second),
    ):
        await first.get("/healthz")
        await first.get("/healthz")
        await second.get("/healthz")
        counts = [
            value((await client.get("/metrics")).text, "baton_http_request_duration_seconds_count",
                  method="GET", route="/healthz", status="200")
            for client in (first, second)
        ]  # fmt: skip
    assert counts == [2, 1]


async def test_consumed_events_are_counted_by_outcome_and_dead_letters_by_topic(engine: AsyncEngine) -> None:
    await migrate(engine, MIGRATIONS, schema="unit")
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit")

    async def failing_for_lead_2(tx: Transaction, event: CloudEvent) -> None:
        if event.subject == "lead-2":
            raise RuntimeError("cannot apply")

    metrics, kafka = ServiceMetrics(), FakeKafkaConsumer()
    consumer = consumer_over(uow, failing_for_lead_2)
    first = record(0, noticed("lead-1"))
    batch = [first, record(1, noticed("lead-2")), record(2, noticed("lead-1", "lead-1")), record(3, noticed("lead-3"))]
    await recording(metrics, consumer._process_partition(kafka, PARTITION, batch))

    text = metrics.exposition()
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="applied") == 2
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="duplicate") == 1
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="retried") == 1
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="dead_lettered") == 1
    assert value(text, "baton_dead_letters_total", topic=TOPIC) == 1


async def test_a_batch_counts_its_events_once_it_commits(engine: AsyncEngine) -> None:
    await migrate(engine, MIGRATIONS, schema="unit")
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit")
    metrics, consumer = ServiceMetrics(), consumer_over(uow, nothing)
    ignored = CloudEvent(type="test.unknown", source="/test", subject="lead-9", data={})
    batch = {PARTITION: [record(0, noticed("lead-1")), record(1, noticed("lead-1")), record(2, ignored)]}

    assert await recording(metrics, consumer._apply_batch(FakeKafkaConsumer(), batch))

    text = metrics.exposition()
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="applied") == 1
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="duplicate") == 1
    assert value(text, "baton_events_consumed_total", topic=TOPIC, outcome="ignored") == 1


async def test_consumer_lag_is_highwater_minus_position_per_partition() -> None:
    metrics = ServiceMetrics()
    await recording(metrics, sample_consumer_lag(FakeKafkaConsumer(highwater=120, position=100), [PARTITION]))
    assert value(metrics.exposition(), "baton_consumer_lag_records", topic=TOPIC, partition="0") == 20


async def test_outbox_backlog_counts_unsent_rows_and_the_oldest_ones_age(engine: AsyncEngine) -> None:
    await migrate(engine, MIGRATIONS, schema="unit")
    sessions = make_sessions(engine)
    uow = UnitOfWork(sessions, METADATA, source="/baton/unit")
    async with uow.transaction() as tx:
        routed = LeadRoutedV1(lead_id="l", assignment_id="a", kind="unassigned", reason="r", score=1, routed_at=AT)
        await tx.emit_all([routed, routed.model_copy(update={"lead_id": "m"})])
        outbox = METADATA.tables[OUTBOX]
        await tx.session.execute(outbox.update().values(created_at=datetime.now(UTC) - timedelta(seconds=90)))
    metrics = ServiceMetrics()

    await recording(metrics, sample_outbox_backlog(sessions, outbox))

    text = metrics.exposition()
    assert value(text, "baton_outbox_unsent_rows") == 2
    age = value(text, "baton_outbox_oldest_unsent_age_seconds")
    assert age is not None and 90 <= age < 120


def test_speed_to_lead_and_sla_misses_are_recorded_only_where_metrics_are_current() -> None:
    metrics = ServiceMetrics()
    observe_speed_to_lead(AT.isoformat(), AT + timedelta(seconds=3))  # no service here: nothing to record into

    def routed() -> None:
        observe_speed_to_lead(AT.isoformat(), AT + timedelta(seconds=3))
        observe_speed_to_lead(AT, AT + timedelta(seconds=0.2))
        observe_speed_to_lead(None, AT)
        observe_speed_to_lead("not a time", AT)
        count_sla_miss()

    metrics_context(metrics).run(routed)

    text = metrics.exposition()
    assert value(text, "baton_speed_to_lead_seconds_count") == 2
    assert value(text, "baton_speed_to_lead_seconds_sum") == 3.2
    assert value(text, "baton_speed_to_lead_seconds_bucket", le="0.25") == 1
    assert value(text, "baton_sla_misses_total") == 1
