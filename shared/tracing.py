"""W3C trace context from the HTTP request through every Kafka hop, so one lead's path is one trace.

An incoming `traceparent` (or a new trace) becomes the request's server span; events emitted meanwhile carry it in
the outbox row as the CloudEvents distributed-tracing extension, which Kafka's binary mode spells
`ce_traceparent` / `ce_tracestate`; a consumer applies each event in a child span of that context, so what its
handler emits stays in the same trace. Logs carry the current trace id and lead id.

Spans go nowhere by default: they carry the trace context (a new span id, the parent's trace id, flags and state,
as the SDK's spans would) and record nothing. With OTEL_EXPORTER_OTLP_ENDPOINT set they are recorded and exported
over OTLP/HTTP, provided the exporter is installed (`pip install opentelemetry-exporter-otlp-proto-http==1.45.2`;
it is not a dependency: it brings protobuf and requests along for something most runs do not use).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes, AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.envelope import CloudEvent
from shared.metrics import route_template

log = logging.getLogger(__name__)

# The CloudEvents distributed-tracing extension's attributes, as Kafka binary-mode headers.
TRACE_HEADERS = {"ce_traceparent": "traceparent", "ce_tracestate": "tracestate"}
# What other Kafka instrumentation (OpenTelemetry's own) writes: read when the extension is absent.
PLAIN_TRACE_HEADERS = {"traceparent": "traceparent", "tracestate": "tracestate"}
OTLP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"

_PROPAGATOR = TraceContextTextMapPropagator()
_lead_id: ContextVar[str | None] = ContextVar("baton_lead_id", default=None)
_request_scope: ContextVar[Mapping[str, Any] | None] = ContextVar("baton_request_scope", default=None)


def configure_tracing(service_name: str) -> None:
    """Install the process's tracer provider once (the first service started in a process names it): the SDK's,
    exporting, when OTEL_EXPORTER_OTLP_ENDPOINT names where to; otherwise one whose spans only carry context."""
    if isinstance(trace.get_tracer_provider(), TracerProvider | ContextOnlyTracerProvider):
        return
    exporter = _otlp_exporter() if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else None
    if exporter is None:
        trace.set_tracer_provider(ContextOnlyTracerProvider())
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"baton-{service_name}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _otlp_exporter() -> Any:
    try:
        exporter_module = importlib.import_module(OTLP_EXPORTER_MODULE)
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but %s is not installed: spans are not exported", OTLP_EXPORTER_MODULE
        )
        return None
    # The exporter reads the endpoint, headers and timeout from the standard OTEL_EXPORTER_OTLP_* variables.
    return exporter_module.OTLPSpanExporter()


class ContextOnlyTracer(trace.NoOpTracer):
    """Spans that carry the trace context and record nothing, for a process that exports no spans. Each gets a new
    span id under its parent's trace id, flags and state (a new sampled trace without a parent), as the SDK's do;
    logs, outbox headers and the 202's trace stay the same. The SDK would build, time and drop a recorded span per
    request and per consumed event: a tenth of feedback's CPU at 400 leads/s."""

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        else:
            trace_id, flags, state = _IDS.generate_trace_id(), TraceFlags(TraceFlags.SAMPLED), TraceState()
        span_context = SpanContext(trace_id, _IDS.generate_span_id(), False, flags, state)
        return NonRecordingSpan(span_context)


class ContextOnlyTracerProvider(trace.NoOpTracerProvider):
    """Hands out ContextOnlyTracer."""

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return _CONTEXT_ONLY


_IDS = RandomIdGenerator()
_CONTEXT_ONLY = ContextOnlyTracer()


@functools.cache
def _tracer() -> trace.Tracer:
    # Once per process: configure_tracing installs the provider before the first span, and get_tracer returns a
    # proxy that follows a provider installed later anyway.
    return trace.get_tracer("baton")


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, if a span is current."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def current_lead_id() -> str | None:
    """The lead being worked on: the consumed event's subject, else the request path's `{lead_id}`."""
    lead_id = _lead_id.get()
    if lead_id:
        return lead_id
    scope = _request_scope.get()
    found = (scope or {}).get("path_params", {}).get("lead_id")
    return str(found) if found else None


def log_fields() -> dict[str, str]:
    """`trace_id` and `lead_id` for a log line, where known."""
    fields = {"trace_id": current_trace_id(), "lead_id": current_lead_id()}
    return {name: value for name, value in fields.items() if value}


def trace_headers() -> list[list[str]]:
    """The current trace context as outbox header pairs (`ce_traceparent`, `ce_tracestate`); none outside a span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return [[f"ce_{name}", value] for name, value in carrier.items()]


def _carrier(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    plain: dict[str, str] = {}
    extension: dict[str, str] = {}
    for name, raw in headers:
        if raw is None:
            continue
        if name in TRACE_HEADERS:
            extension[TRACE_HEADERS[name]] = raw.decode("latin-1")
        elif name in PLAIN_TRACE_HEADERS:
            plain[PLAIN_TRACE_HEADERS[name]] = raw.decode("latin-1")
    return extension or plain


@contextmanager
def consume_span(topic: str, headers: Sequence[tuple[str, bytes | None]], event: CloudEvent) -> Iterator[Span]:
    """Apply `event` in a child span of the trace its record carries (a new trace if none); its subject is the
    lead id of the logs meanwhile."""
    parent = _PROPAGATOR.extract(_carrier(headers))
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
        "cloudevents.event_id": event.id,
        "cloudevents.event_type": event.type,
        "cloudevents.event_subject": event.subject,
    }
    token = _lead_id.set(event.subject or None)
    try:
        with _tracer().start_as_current_span(
            f"process {topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        _lead_id.reset(token)


@contextmanager
def batch_spans(
    topic: str, records: Sequence[tuple[Sequence[tuple[str, bytes | None]], CloudEvent]]
) -> Iterator[dict[str, list[list[str]]]]:
    """One consumer span per event of a batch handed to a handler at once, each a child of its record's trace;
    yields each event's trace context as outbox header pairs, by subject (the lead id), so what the handler emits
    for a lead continues that lead's trace. The spans end when the block does."""
    spans: list[Span] = []
    by_subject: dict[str, list[list[str]]] = {}
    context_only = isinstance(trace.get_tracer_provider(), ContextOnlyTracerProvider)
    try:
        for headers, event in records:
            if context_only and (pairs := _child_context_headers(headers)) is not None:
                by_subject[event.subject] = pairs
                continue
            attributes: dict[str, AttributeValue] = {
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.operation.type": "process",
                "messaging.batch.message_count": len(records),
                "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type,
                "cloudevents.event_subject": event.subject,
            }
            span = _tracer().start_span(
                f"process {topic}",
                context=_PROPAGATOR.extract(_carrier(headers)),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
            spans.append(span)
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            by_subject[event.subject] = [[f"ce_{name}", value] for name, value in carrier.items()]
        yield by_subject
    finally:
        for span in spans:
            span.end()


# The propagator's own pattern (opentelemetry's TraceContextTextMapPropagator), and its length limit.
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAXIMUM_LENGTH = 512


def _child_context_headers(headers: Sequence[tuple[str, bytes | None]]) -> list[list[str]] | None:
    """The outbox header pairs a context-only span for this record would carry, worked out from the record's
    `traceparent` without building the span: the parent's trace id and flags under a new span id, or a new sampled
    trace when the record has no valid parent (as the propagator judges one). None when the record also carries a
    `tracestate`, whose normalising is left to the propagator. Per event of a batch this takes a quarter of the time
    of extracting, starting a span and injecting it: feedback applies three events per lead."""
    carrier = _carrier(headers)
    if "tracestate" in carrier:
        return None
    parent = carrier.get("traceparent", "")
    found = _TRACEPARENT.search(parent) if len(parent) <= _TRACEPARENT_MAXIMUM_LENGTH else None
    if (
        found is not None
        and found.group(2) != "0" * 32
        and found.group(3) != "0" * 16
        and found.group(1) != "ff"
        and not (found.group(1) == "00" and found.group(5))
    ):
        trace_id, flags = found.group(2), found.group(4)
    else:
        trace_id, flags = format(_IDS.generate_trace_id(), "032x"), "01"
    return [["ce_traceparent", f"00-{trace_id}-{_IDS.generate_span_id():016x}-{flags}"]]


class TraceMiddleware:
    """Runs each HTTP request in a server span continuing the caller's `traceparent`, or starting a trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # The router fills this very scope with the route and path parameters: logs read the lead id from it.
        token = _request_scope.set(scope)
        method = scope["method"]
        try:
            with _tracer().start_as_current_span(
                method, context=_PROPAGATOR.extract(carrier), kind=SpanKind.SERVER
            ) as span:
                try:
                    await self.app(scope, receive, send_observed)
                finally:
                    route = route_template(scope)
                    span.update_name(f"{method} {route}")
                    span.set_attributes({"http.request.method": method, "http.route": route})
                    span.set_attribute("http.response.status_code", status)
        finally:
            _request_scope.reset(token)


def install_tracing(app: FastAPI, service_name: str) -> None:
    """Trace the app's requests; installs the process's tracer provider if none is yet."""
    configure_tracing(service_name)
    app.add_middleware(TraceMiddleware)
