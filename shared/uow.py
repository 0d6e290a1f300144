"""Unit of work: a state change, the events it emits (outbox) and the event it consumed (inbox) commit together."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Executable, MetaData, Table, TextClause, text
from sqlalchemy.dialects import sqlite

from shared.envelope import CloudEvent, utc_now
from shared.events import EventPayload
from shared.first_write import last_statement_next
from shared.kafka import OutboundRecord
from shared.outbox import CommittedEvent
from shared.sessions import DbSession, Sessions
from shared.tables import INBOX, OUTBOX
from shared.tracing import trace_headers
from shared.writes import send_writes, write_rows

Kept = TypeVar("Kept")


class Transaction:
    """One open database transaction of a service; records outbox and inbox rows beside the effect."""

    def __init__(
        self, session: DbSession, *, source: str, statements: MessagingStatements, outbox: Table, inbox: Table
    ) -> None:
        self.session = session
        self._outbox = outbox
        self._inbox = inbox
        self.source = source
        self._statements = statements
        self.emitted: list[CloudEvent] = []
        # The outbox rows written, for the relay of this process once they commit (when it takes them).
        self.queued: list[CommittedEvent] = []
        # Set by the consumer while a batch handler runs: each lead's trace context, so events emitted for a lead
        # continue the trace of the event that caused them (one handler call serves many traces).
        self.traces_by_lead: dict[str, list[list[str]]] = {}
        # Set by the consumer applying a batch on the assumption that nothing it reads changes before the commit
        # (PostgreSQL): handlers may then read without locks, provided their last writes fail the commit
        # (IntegrityError: a checked write, shared.writes) when something did; the batch is then applied again, not
        # optimistically.
        self.optimistic = False
        # Work handlers keep for the rest of the transaction, by name, and how each is finished (see `keep`).
        self._kept: dict[str, tuple[Any, Callable[[Any], Awaitable[None]]]] = {}

    def keep(self, name: str, start: Callable[[], Kept], finish: Callable[[Kept], Awaitable[None]]) -> Kept:
        """The work kept under `name` in this transaction, started with `start()` if there is none: the handlers of
        one consumed batch add to it, and `finish(work)` writes it once, before the commit or when `finish(name)`
        is awaited (as work that reads or changes the same rows another way must first)."""
        if name not in self._kept:
            self._kept[name] = (start(), finish)
        work: Kept = self._kept[name][0]
        return work

    async def finish(self, name: str | None = None) -> None:
        """Finish the work kept under `name` (None: all of it, in the order it was started); what is finished is no
        longer kept."""
        for kept in [name] if name is not None else list(self._kept):
            if kept in self._kept:
                work, finish = self._kept.pop(kept)
                await finish(work)

    async def emit(self, payload: EventPayload, *, event_id: str | None = None) -> CloudEvent:
        """Queue `payload` for publication on its topic; it is published only if this transaction commits."""
        event = payload.to_event(source=self.source, event_id=event_id)
        await self._queue([self._outbox_row(payload, event)])
        self.emitted.append(event)
        return event

    async def emit_all(self, payloads: Sequence[EventPayload]) -> list[CloudEvent]:
        """Queue many payloads, in order, with one statement (bulk work emits thousands at once)."""
        if not payloads:
            return []
        events = [payload.to_event(source=self.source) for payload in payloads]
        await self._queue([self._outbox_row(payload, event) for payload, event in zip(payloads, events, strict=True)])
        self.emitted.extend(events)
        return events

    async def _queue(self, rows: list[dict[str, Any]]) -> None:
        queue = self._statements.queue_events
        if isinstance(queue, TextClause) and self._statements.returns_row_ids:
            # PostgreSQL, with a relay in this process: the rows go with the transaction's other writes
            # (shared.writes), and their ids come back before the commit.
            await write_rows(
                self.session, self._outbox, rows, returning=("event_id", "id"), on_rows=partial(self._written, rows)
            )
            return
        if isinstance(queue, TextClause):  # PostgreSQL, NOTIFYing the relays: one statement of column arrays
            await self.session.execute(queue, _columns(rows, json_columns=("headers",)))
            return
        result = await self.session.execute(queue, rows)
        if self._statements.returns_row_ids:
            self._written(rows, result.all())

    def _written(self, rows: list[dict[str, Any]], written: Sequence[Sequence[Any]]) -> None:
        row_ids: dict[str, int] = {event_id: row_id for event_id, row_id in written}
        self.queued.extend(CommittedEvent(row_ids[row["event_id"]], _record(row)) for row in rows)

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
        record = self._statements.record_consumed
        if isinstance(record, TextClause):
            inserted = await self.session.execute(record, _columns(rows))
        else:
            inserted = await self.session.execute(record, rows)
        return set(inserted.scalars().all())

    @property
    def keeps_writes(self) -> bool:
        """Whether writes wait to travel together (shared.writes): on PostgreSQL."""
        return self.session.get_bind().dialect.name == "postgresql"

    async def mark_all_processed_last(self, events: Sequence[tuple[str, str]]) -> None:
        """Record many consumed (event id, topic) pairs with the transaction's last writes, after its kept work is
        finished. For a batch applied on the assumption that none of its events was (a redelivery is rare): one
        round trip fewer than recording them first (mark_all_processed). An id recorded before fails the commit
        (IntegrityError, everything rolled back), and the caller applies the batch again the other way; a
        concurrent replica's commit of the same ids is waited for, as there."""
        await self.finish()
        wanted = list(dict.fromkeys(event_id for event_id, _ in events))
        if wanted:
            topics, now = dict(events), utc_now()
            rows = [{"event_id": event_id, "topic": topics[event_id], "processed_at": now} for event_id in wanted]
            await write_rows(self.session, self._inbox, rows)

    async def mark_processed(self, event_id: str, *, topic: str) -> bool:
        """Record a consumed event; False if it was already applied (a redelivery that must change nothing)."""
        return bool(await self.mark_all_processed([(event_id, topic)]))


def _record(row: dict[str, Any]) -> OutboundRecord:
    headers = [(name, value.encode()) for name, value in row["headers"]]
    return OutboundRecord(topic=row["topic"], key=row["message_key"], value=row["value"], headers=headers)


class UnitOfWork:
    """Opens transactions for a service and, after a commit that emitted events, hands them to the outbox relay of
    the process (`hand_over`) or wakes it (`on_emit`, and a NOTIFY for the relay of another process)."""

    def __init__(
        self,
        sessions: Sessions,
        metadata: MetaData,
        *,
        source: str,
        on_emit: Callable[[], None] = lambda: None,
        notify_channel: str | None = None,
        notify_origin: str = "",
        hand_over: Callable[[Sequence[CommittedEvent]], None] | None = None,
    ) -> None:
        self._sessions = sessions
        # The relay of this process, publishing committed rows from memory: no NOTIFY needed then.
        self._hand_over = hand_over
        # PostgreSQL: a commit that emitted events also NOTIFYs this channel, waking the relay of whichever
        # replica holds the outbox turn (the in-process `on_emit` only wakes this process's relay).
        self._notify_channel = notify_channel
        # The payload of those notifications: the relay of this process ignores its own (`on_emit` woke it).
        self._notify_origin = notify_origin
        self._outbox = metadata.tables[OUTBOX]
        self._inbox = metadata.tables[INBOX]
        self._source = source
        self.on_emit = on_emit
        self._statements: dict[str, MessagingStatements] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Begin; commit when the block ends normally, roll back if it raises."""
        async with self._sessions() as session, session.begin():
            tx = Transaction(
                session,
                source=self._source,
                statements=self._statements_for(session),
                outbox=self._outbox,
                inbox=self._inbox,
            )
            yield tx
            await tx.finish()
            # PostgreSQL (shared.first_write): reads before the first write ran outside the transaction; if nothing
            # wrote yet, the writes kept go alone, a transaction of their own (no BEGIN, no COMMIT).
            await last_statement_next(session)
            await send_writes(session)  # what the transaction kept to send with its last statement
        if tx.queued and self._hand_over is not None:
            self._hand_over(tx.queued)
        elif tx.emitted:
            self.on_emit()

    def _statements_for(self, session: DbSession) -> MessagingStatements:
        dialect = session.get_bind().dialect.name
        if dialect not in self._statements:
            self._statements[dialect] = MessagingStatements.build(
                self._outbox, self._inbox, postgres=dialect == "postgresql",
                notify_channel=None if self._hand_over else self._notify_channel, notify_origin=self._notify_origin,
                returning_row_ids=self._hand_over is not None,
            )  # fmt: skip
        return self._statements[dialect]

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbSession]:
        """A session for queries that change nothing."""
        async with self._sessions() as session:
            yield session


@dataclass(frozen=True)
class MessagingStatements:
    """The outbox and inbox statements of a service, built once per dialect (building one takes about half the CPU
    of running it).

    On PostgreSQL each takes one array per column, so a batch of any size is one prepared statement and one round
    trip. With a relay in the process, queued events go with the transaction's other kept writes (shared.writes) and
    return the rows' ids; without one, the statement queuing them also NOTIFYs the relays' channel (delivered at
    commit)."""

    queue_events: Executable
    record_consumed: Executable
    returns_row_ids: bool = False

    @classmethod
    def build(
        cls,
        outbox: Table,
        inbox: Table,
        *,
        postgres: bool,
        notify_channel: str | None,
        notify_origin: str = "",
        returning_row_ids: bool = False,
    ) -> MessagingStatements:
        if not postgres:
            queue_sqlite = outbox.insert()
            if returning_row_ids:
                queue_sqlite = queue_sqlite.returning(outbox.c.event_id, outbox.c.id)
            return cls(
                queue_events=queue_sqlite,
                record_consumed=sqlite.insert(inbox)
                .on_conflict_do_nothing(index_elements=[inbox.c.event_id])
                .returning(inbox.c.event_id),
                returns_row_ids=returning_row_ids,
            )
        queue = (
            f"INSERT INTO {outbox.name} (event_id, topic, message_key, value, headers, created_at) "
            "SELECT event_id, topic, message_key, value, headers::json, created_at FROM unnest("
            "CAST(:event_id AS varchar[]), CAST(:topic AS varchar[]), CAST(:message_key AS bytea[]), "
            "CAST(:value AS bytea[]), CAST(:headers AS text[]), CAST(:created_at AS timestamptz[])) WITH ORDINALITY "
            "AS queued(event_id, topic, message_key, value, headers, created_at, position) ORDER BY position"
        )
        if notify_channel is not None and not returning_row_ids:
            queue = f"WITH queued_events AS ({queue}) SELECT pg_notify(:channel, :origin)"
        queue_events = text(queue)
        if notify_channel is not None and not returning_row_ids:
            queue_events = queue_events.bindparams(channel=notify_channel, origin=notify_origin)
        record = text(
            f"INSERT INTO {inbox.name} (event_id, topic, processed_at) "
            "SELECT * FROM unnest(CAST(:event_id AS varchar[]), CAST(:topic AS varchar[]), "
            "CAST(:processed_at AS timestamptz[])) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        )
        return cls(queue_events=queue_events, record_consumed=record, returns_row_ids=returning_row_ids)


def _columns(rows: list[dict[str, Any]], *, json_columns: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """Rows as one list per column (PostgreSQL's `unnest` takes them as arrays); JSON columns serialized."""
    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in rows[0]}
    for name in json_columns:
        columns[name] = [json.dumps(value) for value in columns[name]]
    return columns
