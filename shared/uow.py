"""Unit of work: a state change, the events it emits (outbox) and the event it consumed (inbox) commit together."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import MetaData, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.envelope import CloudEvent, utc_now
from shared.events import EventPayload
from shared.tables import INBOX, OUTBOX
from shared.tracing import trace_headers


class Transaction:
    """One open database transaction of a service; records outbox and inbox rows beside the effect."""

    def __init__(self, session: AsyncSession, *, source: str, outbox: Table, inbox: Table) -> None:
        self.session = session
        self.source = source
        self._outbox = outbox
        self._inbox = inbox
        self.emitted: list[CloudEvent] = []
        # Set by the consumer while a batch handler runs: each lead's trace context, so events emitted for a lead
        # continue the trace of the event that caused them (one handler call serves many traces).
        self.traces_by_lead: dict[str, list[list[str]]] = {}

    async def emit(self, payload: EventPayload, *, event_id: str | None = None) -> CloudEvent:
        """Queue `payload` for publication on its topic; it is published only if this transaction commits."""
        event = payload.to_event(source=self.source, event_id=event_id)
        await self.session.execute(self._outbox.insert().values(**self._outbox_row(payload, event)))
        self.emitted.append(event)
        return event

    async def emit_all(self, payloads: Sequence[EventPayload]) -> list[CloudEvent]:
        """Queue many payloads, in order, with one statement (bulk work emits thousands at once)."""
        if not payloads:
            return []
        events = [payload.to_event(source=self.source) for payload in payloads]
        rows = [self._outbox_row(payload, event) for payload, event in zip(payloads, events, strict=True)]
        await self.session.execute(self._outbox.insert(), rows)
        self.emitted.extend(events)
        return events

    def _outbox_row(self, payload: EventPayload, event: CloudEvent) -> dict[str, Any]:
        key, value, headers = event.to_kafka()
        lead_id = getattr(payload, "lead_id", None)
        trace = self.traces_by_lead.get(lead_id) if isinstance(lead_id, str) else None
        return {
            "event_id": event.id,
            "topic": payload.TOPIC,
            "message_key": key,
            "value": value,
            "headers": [*([name, raw.decode()] for name, raw in headers), *(trace or trace_headers())],
            "created_at": utc_now(),
        }

    async def mark_all_processed(self, events: Sequence[tuple[str, str]]) -> set[str]:
        """Record many consumed (event id, topic) pairs at once; returns the ids not applied before (the rest are
        redeliveries that must change nothing). An id repeated within `events` counts once."""
        wanted = list(dict.fromkeys(event_id for event_id, _ in events))
        if not wanted:
            return set()
        topics, now = dict(events), utc_now()
        rows = [{"event_id": event_id, "topic": topics[event_id], "processed_at": now} for event_id in wanted]
        # One statement: the ids inserted are the fresh ones; a conflict is an id applied before (or by a
        # concurrent replica, whose commit this waits for).
        inserted = await self.session.execute(self._insert_new_inbox_rows(), rows)
        return set(inserted.scalars().all())

    def _insert_new_inbox_rows(self) -> Any:
        insert = postgresql.insert if self.session.get_bind().dialect.name == "postgresql" else sqlite.insert
        return (
            insert(self._inbox)
            .on_conflict_do_nothing(index_elements=[self._inbox.c.event_id])
            .returning(self._inbox.c.event_id)
        )

    async def mark_processed(self, event_id: str, *, topic: str) -> bool:
        """Record a consumed event; False if it was already applied (a redelivery that must change nothing)."""
        return bool(await self.mark_all_processed([(event_id, topic)]))


class UnitOfWork:
    """Opens transactions for a service and wakes the outbox relay after a commit that emitted events."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metadata: MetaData,
        *,
        source: str,
        on_emit: Callable[[], None] = lambda: None,
        notify_channel: str | None = None,
    ) -> None:
        self._sessions = sessions
        # PostgreSQL: a commit that emitted events also NOTIFYs this channel, waking the relay of whichever
        # replica holds the outbox turn (the in-process `on_emit` only wakes this process's relay).
        self._notify_channel = notify_channel
        self._outbox = metadata.tables[OUTBOX]
        self._inbox = metadata.tables[INBOX]
        self._source = source
        self.on_emit = on_emit

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Begin; commit when the block ends normally, roll back if it raises."""
        async with self._sessions() as session, session.begin():
            tx = Transaction(session, source=self._source, outbox=self._outbox, inbox=self._inbox)
            yield tx
            if tx.emitted and self._notify_channel:
                await session.execute(select(func.pg_notify(self._notify_channel, "")))
        if tx.emitted:
            self.on_emit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for queries that change nothing."""
        async with self._sessions() as session:
            yield session
