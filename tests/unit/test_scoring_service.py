"""Scoring a captured lead: the score is stored and announced with its explanation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring import store
from services.scoring.handlers import HANDLERS
from shared.events import LeadCapturedV1, LeadScoredV1, parse_payload
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events

CAPTURED = LeadCapturedV1(
    lead_id="lead-1",
    email="ada@acme.test",
    company="Acme",
    company_domain="acme.test",
    job_title="CEO",
    captured_at=datetime(2024, 5, 1, tzinfo=UTC),
)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="scoring")


async def _handle(uow: UnitOfWork, captured: LeadCapturedV1) -> None:
    event = captured.to_event(source="/baton/lead_intake")
    async with uow.transaction() as tx:
        await HANDLERS[event.type](tx, event)


async def test_captured_lead_is_scored_stored_and_announced(uow: UnitOfWork) -> None:
    await _handle(uow, CAPTURED)
    async with uow.read() as session:
        row = await store.load_score(session, lead_id="lead-1")
    assert row is not None
    assert (row["score"], row["verdict"], row["model_version"]) == (70, "qualified", "rules-v1")
    [event] = await outbox_events(uow, store.metadata)
    scored = parse_payload(event, LeadScoredV1)
    assert (scored.lead_id, scored.score, scored.verdict, scored.company_domain) == (
        "lead-1",
        70,
        "qualified",
        "acme.test",
    )
    assert [c.model_dump() for c in scored.contributions] == row["contributions"]


async def test_rescoring_replaces_the_stored_score(uow: UnitOfWork) -> None:
    await _handle(uow, CAPTURED)
    await _handle(uow, CAPTURED.model_copy(update={"company_domain": None, "company": None, "job_title": None}))
    async with uow.read() as session:
        row = await store.load_score(session, lead_id="lead-1")
    assert row is not None
    assert (row["score"], row["verdict"], row["contributions"]) == (0, "nurture", [])
