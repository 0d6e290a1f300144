"""Capturing a lead: stored and announced in one transaction, once per email; activities, held or recorded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import store
from services.lead_intake.domain import Lead
from services.lead_intake.service import Activity, UnknownLead, capture_lead, capture_leads, record_activity
from shared.events import ActivityRecordedV1, LeadCapturedV1, LeadMergedV1, parse_payload
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
        stored = await store.find_lead_by_email(session, email="ada@acme.test")
    assert stored is not None and stored.lead_id == "lead-1"
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


async def test_resubmission_keeps_the_lead_id_merges_new_fields_and_announces_renewed_interest(
    uow: UnitOfWork,
) -> None:
    await capture_lead(uow, Lead(lead_id="lead-1", email="ada@acme.test", captured_at=AT, company="Acme"))
    again = Lead(lead_id="lead-2", email="ada@acme.test", captured_at=AT, job_title="CTO", interests=("ai",))

    assert await capture_lead(uow, again) == ("lead-1", "merged")

    events = await outbox_events(uow, store.metadata)
    assert [event.type for event in events] == [LeadCapturedV1.EVENT_TYPE, LeadMergedV1.EVENT_TYPE]
    merged = parse_payload(events[1], LeadMergedV1)
    assert (merged.lead_id, merged.company, merged.job_title) == ("lead-1", "Acme", "CTO")
    assert set(merged.changed_fields) == {"job_title", "interests"}
    async with uow.read() as session:
        [change] = await store.load_history(session, lead_id="lead-1")
    assert change["changes"]["job_title"] == [None, "CTO"]


async def test_reimported_row_that_changes_nothing_creates_nothing(uow: UnitOfWork) -> None:
    lead = Lead(lead_id="lead-1", email="ada@acme.test", captured_at=AT, company="Acme")
    await capture_leads(uow, [lead])

    again = await capture_leads(uow, [Lead(lead_id="lead-2", email="ada@acme.test", captured_at=AT, company="Acme")])

    assert again == [("lead-1", "unchanged")]
    assert len(await outbox_events(uow, store.metadata)) == 1


async def test_duplicate_emails_within_one_batch_make_one_lead(uow: UnitOfWork) -> None:
    first = Lead(lead_id="lead-1", email="ada@acme.test", captured_at=AT)
    second = Lead(lead_id="lead-2", email="ada@acme.test", captured_at=AT, city="Osaka")

    assert await capture_leads(uow, [first, second]) == [("lead-1", "captured"), ("lead-1", "merged")]


async def test_activity_of_an_unknown_email_is_held_then_attached_when_the_lead_arrives(uow: UnitOfWork) -> None:
    activity = Activity(kind="content_download", occurred_at=AT, title="Pricing guide")
    _, status = await record_activity(uow, activity, lead_id=None, email="later@acme.test")
    assert status == "held"
    assert await outbox_events(uow, store.metadata) == []

    await capture_lead(uow, Lead(lead_id="lead-9", email="later@acme.test", captured_at=AT))

    events = await outbox_events(uow, store.metadata)
    assert [event.type for event in events] == [LeadCapturedV1.EVENT_TYPE, ActivityRecordedV1.EVENT_TYPE]
    assert parse_payload(events[1], ActivityRecordedV1).lead_id == "lead-9"


async def test_activity_for_an_unknown_lead_id_is_refused(uow: UnitOfWork) -> None:
    with pytest.raises(UnknownLead):
        await record_activity(uow, Activity(kind="page_view", occurred_at=AT), lead_id="nope", email=None)
