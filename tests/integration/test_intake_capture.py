"""lead_intake's capture on real PostgreSQL: a batch learns in one read which leads it knows and whether an activity
waits for one of its emails; held activities are released to the lead that arrives, and nothing else is read."""

from __future__ import annotations

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
from shared.db import make_engine, make_sessions, migrate
from shared.outbox import CommittedEvent
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


async def test_a_held_activity_goes_to_the_lead_that_arrives_and_a_batch_without_any_reads_once(
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
    assert len(statements) == 2, statements  # the read, then every write at once
    assert with_held == 4, statements  # the read, the held activities taken (a read, a delete), every write
    events = await outbox_events(uow, store.metadata)
    assert [(event.type, event.subject) for event in events] == [
        ("dev.baton.lead.captured.v1", ann_id),
        ("dev.baton.lead.activity.v1", ann_id),
        ("dev.baton.lead.captured.v1", bo_id),
        ("dev.baton.lead.captured.v1", events[-1].subject),
    ]
    async with uow.read() as session:
        assert (await session.execute(select(store.held_activities))).first() is None
