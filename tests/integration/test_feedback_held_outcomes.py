"""Feedback with several replicas on PostgreSQL: an outcome one replica holds while another applies its lead's
capture is not left held for good."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.feedback import store
from services.feedback.handlers import HANDLERS
from services.feedback.service import apply_outcomes_held_for_known_leads
from shared.db import make_sessions
from shared.envelope import CloudEvent
from shared.events import LeadCapturedV1, OutcomeRecordedV1
from shared.topics import LEADS_CAPTURED, LEADS_OUTCOMES
from shared.uow import Transaction, UnitOfWork
from tests.integration.conftest import migrated_engine

T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)


@pytest.fixture
async def feedback(database_url: str) -> AsyncIterator[UnitOfWork]:
    async with migrated_engine(database_url, store.MIGRATIONS) as engine:
        yield UnitOfWork(make_sessions(engine), store.metadata, source="/baton/feedback")


async def _apply(tx: Transaction, event: CloudEvent, topic: str) -> None:
    """What a replica's consumer does with one event in its batch's transaction: inbox, then handler."""
    assert await tx.mark_processed(event.id, topic=topic)
    await HANDLERS[event.type](tx, event)


async def test_an_outcome_held_while_another_replica_captures_its_lead_is_applied_once_held_a_while(
    feedback: UnitOfWork,
) -> None:
    captured = LeadCapturedV1(lead_id="lead-1", email="ada@acme.test", captured_at=T0).to_event(source="/t")
    won = OutcomeRecordedV1(lead_id="lead-1", outcome_id="o-1", kind="won", amount=Decimal("1200.50"),
                            currency="EUR", occurred_at=T0 + timedelta(hours=1)).to_event(source="/t")  # fmt: skip
    async with feedback.transaction() as capturing:  # one replica applies the capture: no card, nothing held yet
        await _apply(capturing, captured, LEADS_CAPTURED)
        async with feedback.transaction() as holding:  # the other holds the outcome: it sees no card either
            await _apply(holding, won, LEADS_OUTCOMES)
    async with feedback.read() as session:
        assert [step["step"] for step in await store.load_journey(session, lead_id="lead-1")] == ["captured"]
        stranded = await store.known_leads_with_held_outcomes(session, held_before=datetime.now(UTC), limit=10)
    assert stranded == ["lead-1"]

    assert await apply_outcomes_held_for_known_leads(feedback, held_for=timedelta(0)) == 1

    async with feedback.read() as session:
        journey = [step["step"] for step in await store.load_journey(session, lead_id="lead-1")]
        card = await store.load_card(session, lead_id="lead-1")
        still_held = await store.known_leads_with_held_outcomes(session, held_before=datetime.now(UTC), limit=10)
    assert journey == ["captured", "outcome:won"]
    assert card is not None and (card.state, card.won_amount) == ("won", Decimal("1200.50"))
    assert still_held == []
