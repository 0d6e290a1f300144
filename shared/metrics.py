"""Prometheus metrics of one service: HTTP latency, events consumed and produced, consumer lag, outbox backlog,
dead letters, speed to lead and SLA misses, served on `/metrics`.

Each service runtime owns a CollectorRegistry of its own rather than prometheus-client's global default: tests run
several apps in one process, and one global registry would refuse the second app's metrics (duplicated
timeseries) or mix their counts. Code that does not hold the runtime (a use case, the consumer, the relay) reaches
the registry through a context variable, set by the HTTP middleware for each request and by the runtime for the
tasks it spawns; elsewhere (a command-line tool, a unit test of one piece) the recording functions do nothing.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import Table, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.envelope import utc_now
from shared.sessions import Sessions

log = logging.getLogger(__name__)

# Seconds from capture to first routing decision: the product promises well under a minute.
SPEED_TO_LEAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The outbox backlog query runs at most this often, whatever the relay's pace.
OUTBOX_SAMPLE_SECONDS = 1.0
UNMATCHED_ROUTE = "unmatched"


class ServiceMetrics:
    """The metrics of one service, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_duration = Histogram(
            "baton_http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.events_consumed = Counter(
            "baton_events_consumed", "Events consumed, by topic and outcome.", ["topic", "outcome"], registry=r
        )
        self.events_produced = Counter(
            "baton_events_produced", "Events the outbox relay published, by topic.", ["topic"], registry=r
        )
        self.consumer_lag = Gauge(
            "baton_consumer_lag_records",
            "Records behind the partition's end (highwater - position), sampled when a batch is fetched.",
            ["topic", "partition"],
            registry=r,
        )
        self.outbox_backlog = Gauge("baton_outbox_unsent_rows", "Outbox rows committed but not published.", registry=r)
        self.outbox_age = Gauge(
            "baton_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unpublished outbox row (0 if none).",
            registry=r,
        )
        self.dead_letters = Counter(
            "baton_dead_letters", "Records sent to the dead-letter topic, by original topic.", ["topic"], registry=r
        )
        self.speed_to_lead = Histogram(
            "baton_speed_to_lead_seconds",
            "Seconds from a lead's capture to its first routing decision.",
            buckets=SPEED_TO_LEAD_BUCKETS,
            registry=r,
        )
        self.sla_misses = Counter("baton_sla_misses", "Follow-up SLAs a rep missed.", registry=r)
        self.batches_reapplied = Counter(
            "baton_consumer_batches_reapplied",
            "Batches applied optimistically whose commit failed (a redelivered event, or rows another writer "
            "changed since they were read), then applied again with the inbox checked first and with locks.",
            registry=r,
        )
        self.consumer_restarts = Counter(
            "baton_consumer_restarts",
            "Kafka consumer clients replaced, by reason (stalled: fetched nothing while records waited; "
            "commits_failing: offset commits failed in a row; error).",
            ["reason"],
            registry=r,
        )
        self._outbox_sampled_at = float("-inf")

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def outbox_sample_due(self) -> bool:
        """True at most once per OUTBOX_SAMPLE_SECONDS."""
        now = time.monotonic()
        if now - self._outbox_sampled_at < OUTBOX_SAMPLE_SECONDS:
            return False
        self._outbox_sampled_at = now
        return True


_current: ContextVar[ServiceMetrics | None] = ContextVar("baton_metrics", default=None)


def current_metrics() -> ServiceMetrics | None:
    """The metrics of the service running this code, if any."""
    return _current.get()


def metrics_context(metrics: ServiceMetrics) -> contextvars.Context:
    """A copy of the current context in which `metrics` records: for the tasks a service runtime spawns."""
    context = contextvars.copy_context()
    context.run(_current.set, metrics)
    return context


# --- recording ------------------------------------------------------------------------------------------------------


def observe_speed_to_lead(captured_at: datetime | str | None, routed_at: datetime) -> None:
    """Record the seconds from a lead's capture (a datetime or its ISO 8601 text) to its first routing decision."""
    metrics = _current.get()
    if metrics is None or captured_at is None:
        return
    try:
        captured = captured_at if isinstance(captured_at, datetime) else datetime.fromisoformat(captured_at)
        seconds = (routed_at - captured).total_seconds()
    except (TypeError, ValueError):  # a naive or malformed timestamp from an outside tool: no sample
        return
    metrics.speed_to_lead.observe(max(seconds, 0.0))


def count_sla_miss() -> None:
    """Record one follow-up SLA a rep missed."""
    if (metrics := _current.get()) is not None:
        metrics.sla_misses.inc()


def count_consumed(topic: str, outcome: str) -> None:
    """Record one consumed event's outcome: applied, duplicate, ignored, retried or dead_lettered."""
    if (metrics := _current.get()) is not None:
        metrics.events_consumed.labels(topic, outcome).inc()


def count_consumed_all(outcomes: Iterable[tuple[str, str]]) -> None:
    """Record many (topic, outcome) pairs, once the batch they belong to committed."""
    for topic, outcome in outcomes:
        count_consumed(topic, outcome)


def count_consumer_restart(reason: str) -> None:
    """Record a consumer client replaced for `reason`."""
    if (metrics := _current.get()) is not None:
        metrics.consumer_restarts.labels(reason).inc()


def count_batch_reapplied() -> None:
    """Record a batch applied again after its optimistic attempt failed."""
    if (metrics := _current.get()) is not None:
        metrics.batches_reapplied.inc()


def count_dead_letter(topic: str) -> None:
    """Record a record of `topic` sent to its dead-letter topic."""
    if (metrics := _current.get()) is not None:
        metrics.dead_letters.labels(topic).inc()
        metrics.events_consumed.labels(topic, "dead_lettered").inc()


def count_produced(topics: Iterable[str]) -> None:
    """Record events published, one topic per event."""
    if (metrics := _current.get()) is not None:
        for topic in topics:
            metrics.events_produced.labels(topic).inc()


async def sample_consumer_lag(consumer: Any, partitions: Iterable[TopicPartition]) -> None:
    """Record highwater - position of each partition just fetched (an aiokafka consumer's last known figures)."""
    metrics = _current.get()
    if metrics is None:
        return
    for partition in partitions:
        try:
            highwater = consumer.highwater(partition)
            position = await consumer.position(partition)
        except (AssertionError, IllegalStateError):  # revoked by a rebalance meanwhile
            continue
        if highwater is not None:
            metrics.consumer_lag.labels(partition.topic, str(partition.partition)).set(max(highwater - position, 0))


async def sample_outbox_backlog(sessions: Sessions, outbox: Table) -> None:
    """Refresh the backlog gauges with one query, at most once a second; a failing database leaves them as they
    were (the relay reports the outage)."""
    metrics = _current.get()
    if metrics is None or not metrics.outbox_sample_due():
        return
    query = select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.sent_at.is_(None))
    try:
        async with sessions() as session:
            count, oldest = (await session.execute(query)).one()
    except Exception as exc:
        log.debug("outbox backlog not sampled: %r", exc)
        return
    metrics.outbox_backlog.set(count or 0)
    metrics.outbox_age.set(max((utc_now() - oldest).total_seconds(), 0.0) if oldest else 0.0)


# --- HTTP -----------------------------------------------------------------------------------------------------------


def route_template(scope: Mapping[str, Any]) -> str:
    """The matched route's path template (`/v1/leads/{lead_id}`), never the raw path: bounded label values."""
    route = scope.get("route")
    return str(getattr(route, "path", None) or UNMATCHED_ROUTE)


class HttpMetricsMiddleware:
    """Times every HTTP request by method, route template and status, and makes `metrics` current meanwhile."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: an exception escaped to the server error handler

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = _current.set(self.metrics)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.http_duration.labels(scope["method"], route_template(scope), str(status)).observe(elapsed)
            _current.reset(token)


def install_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Time the app's requests and serve `/metrics`, open like the health routes (scrapers carry no key)."""
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)

    async def metrics_endpoint() -> Response:
        """Prometheus scrape endpoint."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False, tags=["health"])
