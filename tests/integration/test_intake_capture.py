"""lead_intake's capture on real PostgreSQL: a batch of new emails writes at once, without a read; otherwise it learns
in one read which leads it knows and whether an activity waits for one of its emails; held activities are released
to the lead that arrives, and nothing else is read."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import store
from services.lead_intake.domain import Lead
from services.lead_intake.service import Activity, capture_submissions, record_activity
from shared.db import make_engine, migrate
from shared.outbox import CommittedEvent
from shared.sessions import make_sessions
from shared.uow import UnitOfWork
from tests.unit.fakes import outbox_events


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh lead_intake schema, migrated."""
    schema = f"intake_{uuid.uuid4().hex[:8]}"
    engine = make_engine(database_url, schema=schema)
    await migrate(engine, store.MIGRATIONS, schema=schema)
    yield engine
    await engine.dispose()


def _lead(email: str) -> Lead:
    return Lead(lead_id=str(uuid.uuid4()), email=email, captured_at=datetime.now(UTC), company="ACME")


async def test_a_held_activity_goes_to_the_lead_that_arrives_and_a_batch_of_new_emails_only_writes(
    engine: AsyncEngine,
) -> None:
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), store.metadata, source="/baton/lead-intake", hand_over=handed.extend)
    visit = Activity(kind="page_view", occurred_at=datetime.now(UTC), url="https://acme.example/pricing")
    _, status = await record_activity(uow, visit, lead_id=None, email="ann@acme.example")
    assert status == "held"
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    [(ann_id, ann_status), (bo_id, _)] = await capture_submissions(
        uow, [_lead("ann@acme.example"), _lead("bo@acme.example")], traces=[[], []]
    )
    with_held = len(statements)
    statements.clear()
    [(_, cy_status)] = await capture_submissions(uow, [_lead("cy@acme.example")], traces=[[]])
    assert (ann_status, cy_status) == ("captured", "captured")
    assert len(statements) == 1, statements  # every write at once, no read: the email is new
    # the writes at once, failing (an activity is held for ann); then the read, the held activities taken (a read, a
    # delete), every write
    assert with_held == 5, statements
    events = await outbox_events(uow, store.metadata)
    assert [(event.type, event.subject) for event in events] == [
        ("dev.baton.lead.captured.v1", ann_id),
        ("dev.baton.lead.activity.v1", ann_id),
        ("dev.baton.lead.captured.v1", bo_id),
        ("dev.baton.lead.captured.v1", events[-1].subject),
    ]
    async with uow.read() as session:
        assert (await session.execute(select(store.held_activities))).first() is None


async def test_a_resubmitted_email_fails_the_write_at_once_and_merges_as_ever(engine: AsyncEngine) -> None:
    """A batch holding a stored email (or the same new email submitted twice at once) fails its first attempt whole
    and is captured again, reading first: one lead per email, and events as if each was submitted alone."""
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), store.metadata, source="/baton/lead-intake", hand_over=handed.extend)
    [(ann_id, first)] = await capture_submissions(uow, [_lead("ann@acme.example")], traces=[[]])
    [(again_id, second), (bo_id, bo_status)] = await capture_submissions(
        uow, [_lead("ann@acme.example"), _lead("bo@acme.example")], traces=[[], []]
    )
    racing = await asyncio.gather(
        *(capture_submissions(uow, [_lead("cy@acme.example")], traces=[[]]) for _ in range(2))
    )
    assert (first, second, bo_status) == ("captured", "merged", "captured") and again_id == ann_id
    assert sorted(status for [(_, status)] in racing) == ["captured", "merged"]
    assert len({lead_id for [(lead_id, _)] in racing}) == 1
    async with uow.read() as session:
        emails = sorted((await session.execute(select(store.leads.c.email))).scalars())
    assert emails == ["ann@acme.example", "bo@acme.example", "cy@acme.example"]
    events = await outbox_events(uow, store.metadata)
    assert [(event.type, event.subject) for event in events[:3]] == [
        ("dev.baton.lead.captured.v1", ann_id),
        ("dev.baton.lead.merged.v1", ann_id),
        ("dev.baton.lead.captured.v1", bo_id),
    ]
    assert [event.type for event in events[3:]] == ["dev.baton.lead.captured.v1", "dev.baton.lead.merged.v1"]
    assert [event.record.value for event in handed] == [event.to_kafka()[1] for event in events]
