"""The live stream's store: events recorded beside each decision, read back after a seq, filtered, pruned."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import store, stream
from services.routing.stream_api import sse_stream
from shared.events import LeadRoutedV1, RoutingKind
from shared.uow import UnitOfWork
from tests.support.polling import eventually
from tests.unit.fakes import migrated_unit_of_work

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")


def routed(
    lead_id: str, rep_id: str | None, *, team: str | None = "emea", kind: RoutingKind = "assigned"
) -> LeadRoutedV1:
    return LeadRoutedV1(
        lead_id=lead_id, assignment_id=f"a-{lead_id}", kind=kind, rep_id=rep_id, team=team,
        reason="test", score=70, routed_at=NOW,
    )  # fmt: skip


async def record(uow: UnitOfWork, *decisions: LeadRoutedV1) -> None:
    async with uow.transaction() as tx:
        for decision in decisions:
            await stream.append_event(tx.session, await tx.emit(decision), decision)


async def page(uow: UnitOfWork, after_seq: int = 0, **filters: str) -> stream.StreamPage:
    async with uow.read() as session:
        return await stream.events_after(session, after_seq=after_seq, **filters)  # type: ignore[arg-type]


async def test_events_come_back_in_order_as_structured_cloudevents_with_their_kind(uow: UnitOfWork) -> None:
    await record(uow, routed("lead-1", "rep-a"), routed("lead-2", None, team=None, kind="unassigned"))
    result = await page(uow)
    assert [(event.seq, event.kind) for event in result.events] == [(1, "assigned"), (2, "unassigned")]
    first = result.events[0].event
    assert (first["specversion"], first["type"], first["subject"]) == ("1.0", "dev.baton.lead.routed.v1", "lead-1")
    assert first["data"]["rep_id"] == "rep-a"
    assert result.horizon == 2


async def test_reading_after_a_seq_returns_only_later_events(uow: UnitOfWork) -> None:
    await record(uow, routed("lead-1", "rep-a"), routed("lead-2", "rep-a"), routed("lead-3", "rep-a"))
    result = await page(uow, after_seq=1)
    assert [event.event["subject"] for event in result.events] == ["lead-2", "lead-3"]
    assert (await page(uow, after_seq=3)).events == []


def subjects(result: stream.StreamPage) -> list[str]:
    return [event.event["subject"] for event in result.events]


async def test_filters_by_rep_and_by_team_and_by_both(uow: UnitOfWork) -> None:
    await record(
        uow, routed("lead-1", "rep-a"), routed("lead-2", "rep-b"), routed("lead-3", "rep-a", team="apac"),
        routed("lead-4", "rep-c", team="apac"),
    )  # fmt: skip
    assert subjects(await page(uow, rep_id="rep-a")) == ["lead-1", "lead-3"]
    assert subjects(await page(uow, team="apac")) == ["lead-3", "lead-4"]
    assert subjects(await page(uow, rep_id="rep-a", team="emea")) == ["lead-1"]
    # Rows of other reps were looked at too: the next read starts after all of them.
    assert (await page(uow, rep_id="rep-a")).horizon == 4


async def test_a_page_holds_at_most_limit_events_and_the_next_starts_after_it(uow: UnitOfWork) -> None:
    await record(uow, *(routed(f"lead-{number}", "rep-a") for number in range(5)))
    async with uow.read() as session:
        first = await stream.events_after(session, after_seq=0, limit=2)
        second = await stream.events_after(session, after_seq=first.horizon, limit=10)
    assert [event.seq for event in first.events] == [1, 2]
    assert [event.seq for event in second.events] == [3, 4, 5]


async def test_a_recent_gap_in_seq_holds_later_events_back_until_it_settles(uow: UnitOfWork) -> None:
    # seq 2 is missing: taken by a transaction that has not committed yet (or rolled back).
    async with uow.transaction() as tx:
        for seq in (1, 3):
            row: dict[str, Any] = {
                "seq": seq,
                "lead_id": f"lead-{seq}",
                "rep_id": "rep-a",
                "event": {"data": {}},
                "at": NOW,
            }
            await tx.session.execute(store.stream_events.insert().values(**row))
    async with uow.read() as session:
        young = await stream.events_after(session, after_seq=0, now=NOW + timedelta(seconds=1))
        settled = await stream.events_after(session, after_seq=0, now=NOW + stream.SETTLE)
    assert ([event.seq for event in young.events], young.horizon) == ([1], 1)
    assert ([event.seq for event in settled.events], settled.horizon) == ([1, 3], 3)


async def test_pruning_removes_old_events_but_keeps_the_newest(uow: UnitOfWork) -> None:
    await record(uow, routed("lead-1", "rep-a"), routed("lead-2", "rep-a"))
    async with uow.transaction() as tx:
        removed = await stream.prune_stream(tx.session, older_than=datetime.now(UTC) + timedelta(days=1))
    await record(uow, routed("lead-3", "rep-a"))
    async with uow.read() as session:
        # Below the oldest event kept is a gap like any other: it is passed once it has settled.
        kept = await stream.events_after(session, after_seq=0, now=datetime.now(UTC) + stream.SETTLE)
    assert removed == 1
    assert [event.seq for event in kept.events] == [2, 3]


async def test_the_pruner_runs_in_the_background_until_cancelled(uow: UnitOfWork) -> None:
    await record(uow, routed("lead-1", "rep-a"), routed("lead-2", "rep-a"))
    pruner = asyncio.create_task(stream.stream_pruner(keep=timedelta(0), every_seconds=0.05)(uow))

    async def pruned() -> bool:
        async with uow.read() as session:
            return list(await session.scalars(select(store.stream_events.c.seq))) == [2]

    try:
        await eventually(pruned, timeout=10, message="old events were not pruned")
    finally:
        pruner.cancel()


async def test_the_sse_body_frames_each_event_then_keeps_the_connection_alive(uow: UnitOfWork) -> None:
    await record(uow, routed("lead-1", "rep-a"), routed("lead-2", "rep-b"))
    checks = 0

    async def leaves_after_a_few_polls() -> bool:
        nonlocal checks
        checks += 1
        return checks > 4

    chunks = [chunk async for chunk in sse_stream(
        uow, leaves_after_a_few_polls, after_seq=0, rep_id="rep-a", team=None, poll_seconds=0.01,
        keepalive_seconds=0.0)]  # fmt: skip
    assert chunks[0] == "retry: 2000\n\n"
    event_id, name, data, blank, end = chunks[1].split("\n")
    assert (event_id, name, blank, end) == ("id: 1", "event: assigned", "", "")
    assert orjson.loads(data.removeprefix("data: "))["subject"] == "lead-1"
    assert set(chunks[2:]) == {": keep-alive\n\n"}
