"""Consumed events of feedback: every step of every lead's journey, its card and the report cells."""

import uuid

from pydantic import ValidationError

from services.feedback import cards, store
from services.feedback.domain import (
    JourneyStep,
    activity_step,
    captured_step,
    merged_step,
    outcome_step,
    routed_step,
    scored_step,
)
from services.feedback.lifecycle import ImpossibleTransition
from services.feedback.schemas import OutcomeIn
from services.feedback.service import (
    accept_outcome,
    anonymised,
    apply_pending_outcomes,
    apply_published_outcome,
    erase_lead,
    record_step,
    update_card,
)
from shared.consumer import Handler
from shared.envelope import CloudEvent, InvalidEvent
from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadErasedV1,
    LeadMergedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
    parse_payload,
)
from shared.topics import ALL_TOPICS, SALES_OUTCOMES
from shared.uow import Transaction

CONSUMES = (*ALL_TOPICS, SALES_OUTCOMES)
SALES_OUTCOME_TYPE = "dev.baton.sales.outcome.v1"
RAW_TOPICS = {SALES_OUTCOMES: SALES_OUTCOME_TYPE}


async def on_lead_captured(tx: Transaction, event: CloudEvent) -> None:
    """Journey starts; the card gets the lead's origin and segment; outcomes that came first are applied."""
    captured = await anonymised(tx, parse_payload(event, LeadCapturedV1))
    await record_step(tx, event_id=event.id, step=captured_step(captured))
    await update_card(tx, captured.lead_id, lambda card: cards.on_captured(card, captured))
    await apply_pending_outcomes(tx, captured.lead_id)


async def on_lead_merged(tx: Transaction, event: CloudEvent) -> None:
    """A resubmission: the last touch."""
    merged = await anonymised(tx, parse_payload(event, LeadMergedV1))
    await record_step(tx, event_id=event.id, step=merged_step(merged))
    await update_card(tx, merged.lead_id, lambda card: cards.on_merged(card, merged))


async def on_activity(tx: Transaction, event: CloudEvent) -> None:
    """An activity of the lead."""
    await record_step(tx, event_id=event.id, step=activity_step(parse_payload(event, ActivityRecordedV1)))


async def on_lead_scored(tx: Transaction, event: CloudEvent) -> None:
    """Scoring's verdict: score, grade, MQL."""
    scored = parse_payload(event, LeadScoredV1)
    await record_step(tx, event_id=event.id, step=scored_step(scored))
    await update_card(tx, scored.lead_id, lambda card: cards.on_scored(card, scored))


async def on_lead_routed(tx: Transaction, event: CloudEvent) -> None:
    """Routing's decision: owner, speed to lead, SLA misses."""
    routed = parse_payload(event, LeadRoutedV1)
    await record_step(tx, event_id=event.id, step=routed_step(routed))
    await update_card(tx, routed.lead_id, lambda card: cards.on_routed(card, routed))


async def on_outcome(tx: Transaction, event: CloudEvent) -> None:
    """An outcome another tool published on leads.outcomes (our own come back already applied)."""
    await apply_published_outcome(tx, event.id, parse_payload(event, OutcomeRecordedV1))


async def on_sales_outcome(tx: Transaction, event: CloudEvent) -> None:
    """An outcome a sales tool wrote to sales.outcomes: handled like POST /v1/outcomes; one the lifecycle refuses
    is kept on the journey as rejected (there is nobody to answer 409 to)."""
    try:
        body = OutcomeIn.model_validate(event.data)
        outcome = body.as_event(outcome_id=str(uuid.uuid5(uuid.NAMESPACE_URL, event.id)))
    except (ValidationError, ValueError) as exc:
        raise InvalidEvent(f"not a valid outcome: {exc}") from exc
    if outcome.external_id and await store.find_outcome_id(tx.session, external_id=outcome.external_id):
        return
    try:
        await accept_outcome(tx, outcome)
    except ImpossibleTransition as exc:
        step = outcome_step(outcome)
        rejected = JourneyStep(step.lead_id, "outcome_rejected", step.occurred_at, step.actor, str(exc), step.details)
        await record_step(tx, event_id=event.id, step=rejected)


async def on_lead_erased(tx: Transaction, event: CloudEvent) -> None:
    """The lead asked to be forgotten."""
    await erase_lead(tx, parse_payload(event, LeadErasedV1))


HANDLERS: dict[str, Handler] = {
    LeadErasedV1.EVENT_TYPE: on_lead_erased,
    LeadCapturedV1.EVENT_TYPE: on_lead_captured,
    LeadMergedV1.EVENT_TYPE: on_lead_merged,
    ActivityRecordedV1.EVENT_TYPE: on_activity,
    LeadScoredV1.EVENT_TYPE: on_lead_scored,
    LeadRoutedV1.EVENT_TYPE: on_lead_routed,
    OutcomeRecordedV1.EVENT_TYPE: on_outcome,
    SALES_OUTCOME_TYPE: on_sales_outcome,
}
