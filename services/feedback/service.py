"""Use cases of feedback: journey steps, lead cards and report cells from events; outcomes through the lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from sqlalchemy.exc import IntegrityError

from services.feedback import cards, store
from services.feedback.aggregates import LeadCard
from services.feedback.domain import JourneyStep, outcome_step
from services.feedback.lifecycle import ImpossibleTransition
from shared.envelope import utc_now
from shared.events import LeadCapturedV1, LeadErasedV1, OutcomeRecordedV1
from shared.privacy import ERASED, forget_sent_events, is_erased, mark_erased
from shared.problems import ProblemError
from shared.topics import LEADS_OUTCOMES
from shared.uow import Transaction, UnitOfWork

OutcomeStatus = Literal["recorded", "duplicate", "pending"]


async def record_step(tx: Transaction, *, event_id: str, step: JourneyStep) -> None:
    """Add a step to a lead's journey."""
    await store.add_step(tx.session, event_id=event_id, step=step)


async def update_card(tx: Transaction, lead_id: str, change: Callable[[LeadCard | None], LeadCard]) -> LeadCard:
    """Apply `change` to the lead's card (locked) and move the report cells with it."""
    before = await store.load_card(tx.session, lead_id=lead_id, for_update=True)
    after = change(before)
    await store.save_card(tx.session, before, after)
    return after


async def apply_pending_outcomes(tx: Transaction, lead_id: str) -> None:
    """Outcomes that arrived before the lead, applied now that it is known (in the order they came)."""
    for held in await store.take_pending_outcomes(tx.session, lead_id=lead_id):
        await _apply_known(tx, OutcomeRecordedV1.model_validate(held), event_id=f"pending:{held['outcome_id']}")


async def record_outcome(uow: UnitOfWork, outcome: OutcomeRecordedV1) -> tuple[str, OutcomeStatus]:
    """An outcome from a sales tool: checked against the lifecycle (409 naming the current state), stored, put on
    the journey and the lead's card, and emitted on `leads.outcomes` — all in one transaction. A repeated
    external id changes nothing; an outcome for a lead not known yet is kept and applied when it arrives."""
    try:
        async with uow.transaction() as tx:
            known = await _known_outcome(tx, outcome)
            if known:
                return known, "duplicate"
            try:
                status = await accept_outcome(tx, outcome)
            except ImpossibleTransition as exc:
                raise ProblemError(409, str(exc), current_state=exc.current.state, outcome=exc.outcome) from exc
    except IntegrityError:
        async with uow.transaction() as tx:
            known = await _known_outcome(tx, outcome)
        if known:
            return known, "duplicate"
        raise
    return outcome.outcome_id, status


async def _known_outcome(tx: Transaction, outcome: OutcomeRecordedV1) -> str | None:
    if not outcome.external_id:
        return None
    return await store.find_outcome_id(tx.session, external_id=outcome.external_id)


async def accept_outcome(tx: Transaction, outcome: OutcomeRecordedV1) -> OutcomeStatus:
    """Store and announce an outcome in `tx`; raises ImpossibleTransition for a known lead that cannot take it."""
    card = await store.load_card(tx.session, lead_id=outcome.lead_id, for_update=True)
    if card is not None:
        await store.save_card(tx.session, card, cards.on_outcome(card, outcome))
    await store.insert_outcome(
        tx.session,
        **outcome.model_dump(exclude={"external_id"}),
        external_id=outcome.external_id,
        recorded_at=utc_now(),
    )
    event = await tx.emit(outcome)
    # Our own event comes back on leads.outcomes: the inbox row makes that redelivery a no-op.
    await tx.mark_processed(event.id, topic=LEADS_OUTCOMES)
    if card is None:
        await store.hold_outcome(tx.session, outcome_id=outcome.outcome_id, lead_id=outcome.lead_id,
                                 event=outcome.model_dump(mode="json"), at=utc_now())  # fmt: skip
        return "pending"
    await store.add_step(tx.session, event_id=event.id, step=outcome_step(outcome))
    return "recorded"


async def apply_published_outcome(tx: Transaction, event_id: str, outcome: OutcomeRecordedV1) -> None:
    """An outcome another tool put on `leads.outcomes` directly: applied if the lifecycle allows it, otherwise
    kept on the journey as rejected; held if its lead is not known yet."""
    if await store.load_card(tx.session, lead_id=outcome.lead_id) is None:
        await store.hold_outcome(tx.session, outcome_id=outcome.outcome_id, lead_id=outcome.lead_id,
                                 event=outcome.model_dump(mode="json"), at=utc_now())  # fmt: skip
        return
    await _apply_known(tx, outcome, event_id=event_id)


async def _apply_known(tx: Transaction, outcome: OutcomeRecordedV1, *, event_id: str) -> None:
    card = await store.load_card(tx.session, lead_id=outcome.lead_id, for_update=True)
    assert card is not None
    try:
        await store.save_card(tx.session, card, cards.on_outcome(card, outcome))
    except ImpossibleTransition as exc:
        step = outcome_step(outcome)
        rejected = JourneyStep(step.lead_id, "outcome_rejected", step.occurred_at, step.actor, str(exc), step.details)
        await store.add_step(tx.session, event_id=event_id, step=rejected)
        return
    await store.add_step(tx.session, event_id=event_id, step=outcome_step(outcome))


async def erase_lead(tx: Transaction, erased: LeadErasedV1) -> None:
    """Forget who the lead is: the card loses its email, the journey its personal values; aggregates stay."""
    if not await mark_erased(tx.session, store.metadata, lead_id=erased.lead_id):
        return
    card = await store.load_card(tx.session, lead_id=erased.lead_id, for_update=True)
    if card is not None and card.email:
        await store.scrub_journey(tx.session, lead_id=erased.lead_id, values=[card.email])
        await store.save_card(tx.session, card, card.with_(email=None))
    await forget_sent_events(tx.session, store.metadata, lead_id=erased.lead_id)


Captured = TypeVar("Captured", bound=LeadCapturedV1)


async def anonymised(tx: Transaction, captured: Captured) -> Captured:
    """The captured lead as it may be stored: without personal data if the lead was erased before it arrived."""
    if not await is_erased(tx.session, store.metadata, lead_id=captured.lead_id):
        return captured
    return captured.model_copy(update={"email": ERASED, "first_name": None, "last_name": None, "phone": None,
                                       "job_title": None, "city": None, "attributes": {}})  # fmt: skip
