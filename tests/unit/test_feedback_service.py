"""Feedback: outcomes recorded once per sales-tool id, and every event becomes a journey step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feedback import store
from services.feedback.handlers import HANDLERS
from services.feedback.service import apply_outcomes_held_for_known_leads, record_outcome
from shared.envelope import CloudEvent
from shared.events import (
    EventPayload,
    LeadCapturedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
    parse_payload,
)
from shared.problems import ProblemError
from shared.topics import LEADS_OUTCOMES
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events

T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="feedback")


def _won(outcome_id: str, *, external_id: str | None = "crm-1", occurred_at: datetime = T0) -> OutcomeRecordedV1:
    return OutcomeRecordedV1(
        lead_id="lead-1",
        outcome_id=outcome_id,
        kind="won",
        amount=Decimal("1200.50"),
        currency="EUR",
        external_id=external_id,
        occurred_at=occurred_at,
    )


async def _consume(uow: UnitOfWork, event: CloudEvent) -> None:
    """What the consumer does with one event: inbox, then handler, in one transaction."""
    async with uow.transaction() as tx:
        if await tx.mark_processed(event.id, topic="any"):
            await HANDLERS[event.type](tx, event)


async def _steps(uow: UnitOfWork) -> list[str]:
    async with uow.read() as session:
        return [row["step"] for row in await store.load_journey(session, lead_id="lead-1")]


def _event(payload: EventPayload) -> CloudEvent:
    return payload.to_event(source="/baton/test")


async def _captured(uow: UnitOfWork) -> None:
    await _consume(uow, _event(LeadCapturedV1(lead_id="lead-1", email="ada@acme.test", captured_at=T0)))


async def test_outcome_is_recorded_announced_and_added_to_the_journey(uow: UnitOfWork) -> None:
    await _captured(uow)
    assert await record_outcome(uow, _won("o-1")) == ("o-1", "recorded")
    [event] = await outbox_events(uow, store.metadata)
    assert parse_payload(event, OutcomeRecordedV1) == _won("o-1")
    assert await _steps(uow) == ["captured", "outcome:won"]


async def test_repeated_external_id_returns_the_first_outcome_and_changes_nothing(uow: UnitOfWork) -> None:
    await _captured(uow)
    await record_outcome(uow, _won("o-1"))
    assert await record_outcome(uow, _won("o-2")) == ("o-1", "duplicate")
    assert len(await outbox_events(uow, store.metadata)) == 1
    assert await _steps(uow) == ["captured", "outcome:won"]


async def test_outcomes_without_external_id_are_never_duplicates_but_the_lifecycle_still_applies(
    uow: UnitOfWork,
) -> None:
    await _captured(uow)
    await record_outcome(uow, _won("o-1", external_id=None))
    with pytest.raises(ProblemError) as again:
        await record_outcome(uow, _won("o-2", external_id=None))
    assert again.value.status == 409 and again.value.extensions["current_state"] == "won"


async def test_own_outcome_coming_back_from_the_topic_is_not_a_second_step(uow: UnitOfWork) -> None:
    await _captured(uow)
    await record_outcome(uow, _won("o-1"))
    [event] = await outbox_events(uow, store.metadata)
    async with uow.transaction() as tx:
        assert await tx.mark_processed(event.id, topic=LEADS_OUTCOMES) is False
    assert await _steps(uow) == ["captured", "outcome:won"]


async def test_an_outcome_before_its_lead_is_kept_and_applied_when_the_lead_arrives(uow: UnitOfWork) -> None:
    assert await record_outcome(uow, _won("o-1")) == ("o-1", "pending")
    [echo] = await outbox_events(uow, store.metadata)
    await _consume(uow, echo)  # back from leads.outcomes before the lead: held
    assert await _steps(uow) == []
    await _captured(uow)
    assert await _steps(uow) == ["captured", "outcome:won"]
    async with uow.read() as session:
        card = await store.load_card(session, lead_id="lead-1")
    assert card is not None and (card.state, card.won_amount) == ("won", Decimal("1200.50"))


async def test_an_outcome_recorded_while_its_leads_capture_is_applied_is_applied_when_its_event_comes_back(
    uow: UnitOfWork,
) -> None:
    """The API holds nothing for an unknown lead: a capture applied concurrently would not see the hold, and the
    outcome would wait forever. Its event comes back to the consumer, after that capture, and is applied then."""
    assert await record_outcome(uow, _won("o-1")) == ("o-1", "pending")
    async with uow.read() as session:
        assert await store.take_pending_outcomes(session, lead_ids=["lead-1"]) == {}
    await _captured(uow)  # committed after the API looked for the card
    [echo] = await outbox_events(uow, store.metadata)
    await _consume(uow, echo)
    assert await _steps(uow) == ["captured", "outcome:won"]


async def test_an_outcome_held_a_while_for_a_lead_known_since_is_applied_by_the_recheck(uow: UnitOfWork) -> None:
    """A lead scored before its capture came has a card but took nothing held: the recheck applies the outcome once
    it has been held a while, and only once."""
    [echo] = [_event(_won("o-1"))]
    await _consume(uow, echo)  # no card yet: held
    scored = LeadScoredV1(lead_id="lead-1", score=70, verdict="qualified", model_version="1", contributions=(),
                          scored_at=T0 + timedelta(minutes=1), grade="A1")  # fmt: skip
    await _consume(uow, _event(scored))
    assert await _steps(uow) == ["scored"]
    assert await apply_outcomes_held_for_known_leads(uow, held_for=timedelta(minutes=1)) == 0  # held only just now
    assert await apply_outcomes_held_for_known_leads(uow, held_for=timedelta(0)) == 1
    assert await apply_outcomes_held_for_known_leads(uow, held_for=timedelta(0)) == 0
    assert await _steps(uow) == ["outcome:won", "scored"]  # by instant: the win happened first
    async with uow.read() as session:
        card = await store.load_card(session, lead_id="lead-1")
        assert await store.take_pending_outcomes(session, lead_ids=["lead-1"]) == {}
    assert card is not None and (card.state, card.won_amount, card.score) == ("won", Decimal("1200.50"), 70)


async def test_an_outcome_held_for_a_lead_still_unknown_stays_held_through_the_recheck(uow: UnitOfWork) -> None:
    await _consume(uow, _event(_won("o-1")))
    assert await apply_outcomes_held_for_known_leads(uow, held_for=timedelta(0)) == 0
    await _captured(uow)
    assert await _steps(uow) == ["captured", "outcome:won"]


async def test_journey_lists_steps_in_the_order_they_happened(uow: UnitOfWork) -> None:
    routed = LeadRoutedV1(
        lead_id="lead-1",
        assignment_id="a-1",
        kind="assigned",
        rep_id="rep-a",
        rep_name="Aiko",
        reason="round robin",
        score=70,
        routed_at=T0 + timedelta(minutes=2),
    )
    captured = LeadCapturedV1(lead_id="lead-1", email="ada@acme.test", captured_at=T0)
    await _consume(uow, _event(routed))
    await _consume(uow, _event(captured))
    await _consume(uow, _event(_won("o-9", occurred_at=T0 + timedelta(days=3))))
    assert await _steps(uow) == ["captured", "routed", "outcome:won"]


async def test_redelivered_event_adds_one_step(uow: UnitOfWork) -> None:
    event = _event(LeadCapturedV1(lead_id="lead-1", email="ada@acme.test", captured_at=T0))
    await _consume(uow, event)
    await _consume(uow, event)
    assert await _steps(uow) == ["captured"]


async def test_journey_orders_steps_by_instant_whatever_their_offset(uow: UnitOfWork) -> None:
    await _captured(uow)
    earlier = datetime(2024, 5, 1, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    await record_outcome(uow, _won("o-1", occurred_at=earlier))
    assert await _steps(uow) == ["outcome:won", "captured"]
