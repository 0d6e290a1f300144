"""Unit of work: outbox rows commit with the effect, and the inbox turns redeliveries into no-ops."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import migrate
from shared.events import LeadRoutedV1
from shared.outbox import CommittedEvent
from shared.sessions import make_sessions
from shared.topics import LEADS_ROUTED, LEADS_SCORED
from shared.uow import UnitOfWork
from tests.unit.fakes import header, messaging_schema

METADATA, MIGRATIONS = messaging_schema()
OUTBOX = METADATA.tables["outbox"]
INBOX = METADATA.tables["inbox"]

ROUTED = LeadRoutedV1(
    lead_id="lead-1",
    assignment_id="a-1",
    kind="unassigned",
    reason="no active rep",
    score=10,
    routed_at=datetime(2024, 5, 1, tzinfo=UTC),
)


class Wakes:
    """Counts how often the relay would have been woken."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
async def uow(engine: AsyncEngine, wakes: Wakes) -> UnitOfWork:
    await migrate(engine, MIGRATIONS, schema="unit")
    return UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", on_emit=wakes)


async def _outbox_rows(uow: UnitOfWork) -> list[dict[str, Any]]:
    async with uow.read() as session:
        return [dict(row) for row in (await session.execute(select(OUTBOX).order_by(OUTBOX.c.id))).mappings()]


async def test_emitted_event_is_stored_in_the_outbox_when_the_transaction_commits(uow: UnitOfWork) -> None:
    async with uow.transaction() as tx:
        event = await tx.emit(ROUTED)
    [row] = await _outbox_rows(uow)
    assert (row["event_id"], row["topic"], row["message_key"], row["sent_at"]) == (
        event.id,
        LEADS_ROUTED,
        b"lead-1",
        None,
    )
    headers = [(name, value.encode()) for name, value in row["headers"]]
    assert header(headers, "ce_id") == event.id
    assert header(headers, "ce_source") == "/baton/unit"
    assert header(headers, "ce_type") == LeadRoutedV1.EVENT_TYPE


async def test_rolled_back_transaction_leaves_no_outbox_row_and_wakes_nobody(uow: UnitOfWork, wakes: Wakes) -> None:
    with pytest.raises(RuntimeError, match="effect failed"):
        async with uow.transaction() as tx:
            await tx.emit(ROUTED)
            raise RuntimeError("effect failed")
    assert await _outbox_rows(uow) == []
    assert wakes.count == 0


async def test_relay_is_woken_once_after_a_commit_that_emitted(uow: UnitOfWork, wakes: Wakes) -> None:
    async with uow.transaction() as tx:
        await tx.emit(ROUTED)
        await tx.emit(ROUTED.model_copy(update={"assignment_id": "a-2"}))
    assert wakes.count == 1


async def test_relay_is_woken_only_once_the_block_has_committed(uow: UnitOfWork, wakes: Wakes) -> None:
    async with uow.transaction() as tx:
        await tx.emit(ROUTED)
        assert wakes.count == 0
    assert wakes.count == 1


async def test_commit_without_events_does_not_wake_the_relay(uow: UnitOfWork, wakes: Wakes) -> None:
    async with uow.transaction() as tx:
        await tx.mark_processed("event-1", topic=LEADS_SCORED)
    assert wakes.count == 0


async def test_explicit_event_id_is_stored(uow: UnitOfWork) -> None:
    async with uow.transaction() as tx:
        await tx.emit(ROUTED, event_id="fixed-id")
    assert [row["event_id"] for row in await _outbox_rows(uow)] == ["fixed-id"]


async def test_redelivered_event_is_applied_once(uow: UnitOfWork) -> None:
    async with uow.transaction() as tx:
        assert await tx.mark_processed("event-1", topic=LEADS_SCORED) is True
    async with uow.transaction() as tx:
        assert await tx.mark_processed("event-1", topic=LEADS_SCORED) is False
        assert await tx.mark_processed("event-2", topic=LEADS_SCORED) is True


async def test_inbox_row_is_rolled_back_with_a_failed_effect(uow: UnitOfWork) -> None:
    with pytest.raises(RuntimeError):
        async with uow.transaction() as tx:
            await tx.mark_processed("event-1", topic=LEADS_SCORED)
            raise RuntimeError("handler failed")
    async with uow.transaction() as tx:
        assert await tx.mark_processed("event-1", topic=LEADS_SCORED) is True
    async with uow.read() as session:
        assert await session.scalar(select(func.count()).select_from(INBOX)) == 1


class Handed:
    """What the unit of work hands to the relay of its process."""

    def __init__(self) -> None:
        self.events: list[CommittedEvent] = []

    def __call__(self, events: Sequence[CommittedEvent]) -> None:
        self.events.extend(events)


async def test_a_commit_hands_its_rows_to_the_relay_with_their_ids_in_order(engine: AsyncEngine) -> None:
    await migrate(engine, MIGRATIONS, schema="unit")
    handed, wakes = Handed(), Wakes()
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", hand_over=handed, on_emit=wakes)
    async with uow.transaction() as tx:
        first = await tx.emit(ROUTED)
        [second, third] = await tx.emit_all([ROUTED.model_copy(update={"assignment_id": f"a-{n}"}) for n in (2, 3)])
        assert handed.events == []  # not before the commit
    rows = await _outbox_rows(uow)
    assert [(event.row_id, header(event.record.headers, "ce_id")) for event in handed.events] == [
        (row["id"], row["event_id"]) for row in rows
    ]
    assert [row["event_id"] for row in rows] == [first.id, second.id, third.id]
    assert all(event.record.topic == LEADS_ROUTED and event.record.key == b"lead-1" for event in handed.events)
    assert handed.events[0].record.value == rows[0]["value"]
    assert wakes.count == 0  # handing over is the wake-up


async def test_a_rolled_back_transaction_hands_nothing_over(engine: AsyncEngine) -> None:
    await migrate(engine, MIGRATIONS, schema="unit")
    handed = Handed()
    uow = UnitOfWork(make_sessions(engine), METADATA, source="/baton/unit", hand_over=handed)
    with pytest.raises(RuntimeError, match="effect failed"):
        async with uow.transaction() as tx:
            await tx.emit(ROUTED)
            raise RuntimeError("effect failed")
    assert handed.events == []


async def test_work_kept_by_name_is_finished_once_before_the_commit_or_when_asked(uow: UnitOfWork) -> None:
    """Handlers of one transaction add to the same kept work; it is finished (its event emitted) before the commit,
    or earlier when asked, and a failing finish rolls the transaction back."""
    finished: list[list[str]] = []

    def kept(tx: Any) -> list[str]:
        async def finish(work: list[str]) -> None:
            finished.append(list(work))
            await tx.emit(ROUTED.model_copy(update={"lead_id": work[-1]}))

        work: list[str] = tx.keep("leads", list, finish)
        return work

    async with uow.transaction() as tx:
        kept(tx).append("lead-1")
        kept(tx).append("lead-2")
        assert finished == []
    assert finished == [["lead-1", "lead-2"]]
    assert [row["message_key"] for row in await _outbox_rows(uow)] == [b"lead-2"]

    async with uow.transaction() as tx:
        kept(tx).append("lead-3")
        await tx.finish("leads")
        assert finished[-1] == ["lead-3"]
        kept(tx).append("lead-4")  # kept anew after the finish
    assert finished[-1] == ["lead-4"]

    with pytest.raises(RuntimeError):
        async with uow.transaction() as tx:

            async def fail(_: list[str]) -> None:
                await tx.emit(ROUTED.model_copy(update={"lead_id": "lead-5"}))
                raise RuntimeError("finish failed")

            tx.keep("failing", list, fail)
    assert [row["message_key"] for row in await _outbox_rows(uow)] == [b"lead-2", b"lead-3", b"lead-4"]
