"""Feedback and scoring with several replicas on PostgreSQL: an outcome one replica holds while another applies its
lead's capture is not left held for good."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.feedback import store
from services.feedback.handlers import HANDLERS
from services.feedback.service import apply_outcomes_held_for_known_leads
from services.scoring import service as scoring_service
from services.scoring import store as scoring_store
from shared.envelope import CloudEvent
from shared.events import LeadCapturedV1, OutcomeRecordedV1
from shared.sessions import make_sessions
from shared.topics import LEADS_CAPTURED, LEADS_OUTCOMES
from shared.uow import Transaction, UnitOfWork
from tests.integration.conftest import migrated_engine

T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)
CAPTURED = LeadCapturedV1(lead_id="lead-1", email="ada@acme.test", country="jp", captured_at=T0)
WON = OutcomeRecordedV1(lead_id="lead-1", outcome_id="o-1", kind="won", amount=Decimal("1200.50"), currency="EUR",
                        occurred_at=T0 + timedelta(hours=1))  # fmt: skip


@pytest.fixture
async def feedback(database_url: str) -> AsyncIterator[UnitOfWork]:
    async with migrated_engine(database_url, store.MIGRATIONS) as engine:
        yield UnitOfWork(make_sessions(engine), store.metadata, source="/baton/feedback")


@pytest.fixture
async def scoring_db(database_url: str) -> AsyncIterator[UnitOfWork]:
    async with migrated_engine(database_url, scoring_store.MIGRATIONS) as engine:
        yield UnitOfWork(make_sessions(engine), scoring_store.metadata, source="/baton/scoring")


async def _apply(tx: Transaction, event: CloudEvent, topic: str) -> None:
    """What a replica's consumer does with one event in its batch's transaction: inbox, then handler."""
    assert await tx.mark_processed(event.id, topic=topic)
    await HANDLERS[event.type](tx, event)


async def test_an_outcome_held_while_another_replica_captures_its_lead_is_applied_once_held_a_while(
    feedback: UnitOfWork,
) -> None:
    captured, won = CAPTURED.to_event(source="/t"), WON.to_event(source="/t")
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


async def test_an_outcome_scoring_held_while_another_replica_captured_its_lead_is_learned_from_once(
    scoring_db: UnitOfWork,
) -> None:
    async with scoring_db.transaction() as capturing:  # one replica stores the lead's facts: nothing held yet
        await scoring_service.on_lead_captured(capturing, CAPTURED)
        async with scoring_db.transaction() as holding:  # the other sees no facts: it holds the outcome
            await scoring_service.on_outcome(holding, WON)
    async with scoring_db.read() as session:
        assert (await scoring_store.learned_summary(session))["outcomes"] == 0

    assert await scoring_service.learn_from_outcomes_held_for_known_leads(scoring_db) == 1
    assert await scoring_service.learn_from_outcomes_held_for_known_leads(scoring_db) == 0

    async with scoring_db.read() as session:
        assert (await scoring_store.learned_summary(session))["outcomes"] == 1
        [prediction] = await scoring_store.load_predictions(session)
        facts = await scoring_store.load_facts(session, lead_id="lead-1")
    assert (prediction["lead_id"], prediction["label"]) == ("lead-1", 1)
    assert facts is not None and facts["closed"] is True
