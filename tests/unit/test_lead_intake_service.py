"""Capturing a lead: stored and announced in one transaction, once per email."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import store
from services.lead_intake.domain import Lead
from services.lead_intake.service import capture_lead
from shared.events import LeadCapturedV1, parse_payload
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events

AT = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="lead_intake")


async def _captured(uow: UnitOfWork) -> list[LeadCapturedV1]:
    return [parse_payload(event, LeadCapturedV1) for event in await outbox_events(uow, store.metadata)]


async def test_new_lead_is_stored_and_announced(uow: UnitOfWork) -> None:
    lead = Lead(lead_id="lead-1", email="ada@acme.test", captured_at=AT, company="Acme", attributes={"plan": "pro"})
    assert await capture_lead(uow, lead) == ("lead-1", "captured")
    async with uow.read() as session:
        assert await store.find_lead_id_by_email(session, email="ada@acme.test") == "lead-1"
    [captured] = await _captured(uow)
    assert (captured.lead_id, captured.email, captured.company, captured.attributes) == (
        "lead-1",
        "ada@acme.test",
        "Acme",
        {"plan": "pro"},
    )
    assert captured.captured_at == AT


async def test_company_domain_is_derived_from_a_business_email(uow: UnitOfWork) -> None:
    await capture_lead(uow, Lead(lead_id="lead-1", email="ada@acme.test", captured_at=AT))
    await capture_lead(uow, Lead(lead_id="lead-2", email="bob@gmail.com", captured_at=AT))
    assert [captured.company_domain for captured in await _captured(uow)] == ["acme.test", None]


async def test_lead_seen_before_keeps_its_id_and_is_not_announced_again(uow: UnitOfWork) -> None:
    await capture_lead(uow, Lead(lead_id="lead-1", email="ada@acme.test", captured_at=AT))
    again = Lead(lead_id="lead-2", email="ada@acme.test", captured_at=AT, company="Acme")
    assert await capture_lead(uow, again) == ("lead-1", "merged")
    assert [captured.lead_id for captured in await _captured(uow)] == ["lead-1"]
