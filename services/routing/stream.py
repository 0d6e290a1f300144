"""The live stream of routing events for inbox apps (Server-Sent Events), resumable with Last-Event-ID.

Each routing decision appends a row in its own transaction; readers page through rows by `seq`, which is the SSE
event id. Sequence numbers are taken at insert but become visible at commit, so on PostgreSQL seq 11 can be seen
before seq 10 commits. A reader therefore never moves past a gap in `seq` until the row after it is older than
`settle` (a rolled-back transaction leaves a gap for good): events behind a gap wait, none is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import delete, func, select

from services.routing.store import stream_events
from shared.envelope import CloudEvent, utc_now
from shared.events import LeadRoutedV1
from shared.sessions import DbSession
from shared.uow import UnitOfWork
from shared.writes import write_rows

log = logging.getLogger(__name__)

# How long an uncommitted lower seq may keep later events waiting: far longer than any routing transaction.
SETTLE: Final = timedelta(seconds=5)
# Rows looked at per page when working out how far the stream is complete.
SCAN_LIMIT: Final = 1000
# How long events stay replayable; a client offline longer resumes at the oldest event kept.
RETENTION: Final = timedelta(days=7)


@dataclass(frozen=True)
class StreamEvent:
    """One routing event as the stream sends it: its id, its kind and the CloudEvent in structured form."""

    seq: int
    kind: str
    event: dict[str, Any]

    def sse(self) -> str:
        """The event in the text/event-stream format (one JSON line of data, so no data line ever splits)."""
        return f"id: {self.seq}\nevent: {self.kind}\ndata: {orjson.dumps(self.event).decode()}\n\n"


@dataclass(frozen=True)
class StreamPage:
    """Events after a seq, and `horizon`: the seq a reader resumes after next (every row up to it was seen)."""

    events: list[StreamEvent]
    horizon: int


async def append_event(session: DbSession, event: CloudEvent, routed: LeadRoutedV1) -> None:
    """Record `event` for the stream, in the caller's transaction."""
    await append_events(session, [(event, routed)])


async def append_events(session: DbSession, published: Sequence[tuple[CloudEvent, LeadRoutedV1]]) -> None:
    """Record events for the stream, in order (their seqs follow it), in the caller's transaction."""
    if not published:
        return
    now = utc_now()
    rows = [
        {"lead_id": routed.lead_id, "rep_id": routed.rep_id, "team": routed.team, "event": event.to_structured(),
         "at": now}
        for event, routed in published
    ]  # fmt: skip
    await write_rows(session, stream_events, rows)  # sent with the transaction's other writes


async def events_after(
    session: DbSession,
    *,
    after_seq: int,
    rep_id: str | None = None,
    team: str | None = None,
    limit: int = 100,
    settle: timedelta = SETTLE,
    now: datetime | None = None,
) -> StreamPage:
    """Events after `after_seq` (of `rep_id` and/or `team`; no filter: every event), oldest first, at most `limit`,
    stopping before any gap in seq younger than `settle`."""
    complete_to = await _complete_to(session, after_seq=after_seq, settle=settle, now=now or utc_now())
    query = select(stream_events.c.seq, stream_events.c.event).where(
        stream_events.c.seq > after_seq, stream_events.c.seq <= complete_to
    )
    if rep_id is not None:
        query = query.where(stream_events.c.rep_id == rep_id)
    if team is not None:
        query = query.where(stream_events.c.team == team)
    rows = (await session.execute(query.order_by(stream_events.c.seq).limit(limit))).all()
    events = [StreamEvent(seq=seq, kind=_kind(event), event=event) for seq, event in rows]
    horizon = events[-1].seq if len(events) == limit else complete_to
    return StreamPage(events=events, horizon=horizon)


async def _complete_to(session: DbSession, *, after_seq: int, settle: timedelta, now: datetime) -> int:
    """The highest seq up to which every row that will ever exist after `after_seq` is visible now."""
    query = (
        select(stream_events.c.seq, stream_events.c.at)
        .where(stream_events.c.seq > after_seq)
        .order_by(stream_events.c.seq)
        .limit(SCAN_LIMIT)
    )
    complete_to = after_seq
    for seq, at in (await session.execute(query)).all():
        if seq != complete_to + 1 and at > now - settle:
            break  # a lower seq may still commit
        complete_to = seq
    return complete_to


def _kind(event: dict[str, Any]) -> str:
    data = event.get("data")
    return str(data.get("kind", "routed")) if isinstance(data, dict) else "routed"


async def latest_seq(session: DbSession) -> int:
    """The newest event's seq (0 if none): where a client that wants only new events starts."""
    return int(await session.scalar(select(func.coalesce(func.max(stream_events.c.seq), 0))) or 0)


async def prune_stream(session: DbSession, *, older_than: datetime) -> int:
    """Delete events recorded before `older_than`; returns how many. The newest event is always kept, so that
    SQLite (which reuses the highest rowid once deleted) never hands out an id a client already holds."""
    newest = await latest_seq(session)
    result = await session.execute(
        delete(stream_events).where(stream_events.c.at < older_than, stream_events.c.seq < newest)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def stream_pruner(
    *, keep: timedelta = RETENTION, every_seconds: float = 3600.0
) -> Callable[[UnitOfWork], Coroutine[Any, Any, None]]:
    """A background task deleting stream events older than `keep`, every `every_seconds`."""

    async def run(uow: UnitOfWork) -> None:
        while True:
            try:
                async with uow.transaction() as tx:
                    removed = await prune_stream(tx.session, older_than=utc_now() - keep)
                if removed:
                    log.info("pruned %d live stream event(s) older than %s", removed, keep)
            except Exception as exc:  # an outage: the rows are still there next time
                log.warning("pruning the live stream failed, retrying later: %r", exc)
            await asyncio.sleep(every_seconds)  # poll: retention needs no precision

    return run
