"""Consumed events of feedback: every step of every lead's journey, its card and the report cells."""

import functools
import uuid
from collections.abc import Sequence

from pydantic import ValidationError

from services.feedback import cards, store
from services.feedback.domain import (
    JourneyStep,
    activity_step,
    merged_step,
    outcome_step,
    routed_step,
    scored_step,
)
from services.feedback.lifecycle import ImpossibleTransition
from services.feedback.schemas import OutcomeIn
from services.feedback.service import (
    CardUpdate,
    accept_outcome,
    anonymised,
    apply_published_outcomes,
    capture_leads,
    erase_lead,
    record_steps,
    update_cards,
)
from shared.consumer import Batched, Handler
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


async def on_leads_captured(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Journeys start; the cards get the leads' origin and segment; outcomes that came first are applied."""
    await capture_leads(tx, [(event.id, parse_payload(event, LeadCapturedV1)) for event in events])


async def on_leads_merged(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Resubmissions: the last touch."""
    merged = await anonymised(tx, [parse_payload(event, LeadMergedV1) for event in events])
    await update_cards(tx, [CardUpdate(event.id, merged_step(lead), functools.partial(cards.on_merged, merged=lead))
                            for event, lead in zip(events, merged, strict=True)])  # fmt: skip


async def on_activities(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Activities of leads."""
    await record_steps(tx, [(event.id, activity_step(parse_payload(event, ActivityRecordedV1))) for event in events])


async def on_leads_scored(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Scoring's verdicts: score, grade, MQL."""
    scored = [(event.id, parse_payload(event, LeadScoredV1)) for event in events]
    await update_cards(tx, [CardUpdate(event_id, scored_step(lead), functools.partial(cards.on_scored, scored=lead))
                            for event_id, lead in scored])  # fmt: skip


async def on_leads_routed(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Routing's decisions: owner, speed to lead, SLA misses."""
    routed = [(event.id, parse_payload(event, LeadRoutedV1)) for event in events]
    await update_cards(tx, [CardUpdate(event_id, routed_step(lead), functools.partial(cards.on_routed, routed=lead))
                            for event_id, lead in routed])  # fmt: skip


async def on_outcomes(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Outcomes other tools published on leads.outcomes (our own come back already applied)."""
    await apply_published_outcomes(tx, [(event.id, parse_payload(event, OutcomeRecordedV1)) for event in events])


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
        await record_steps(tx, [(event.id, rejected)])


async def on_lead_erased(tx: Transaction, event: CloudEvent) -> None:
    """The lead asked to be forgotten."""
    await erase_lead(tx, parse_payload(event, LeadErasedV1))


HANDLERS: dict[str, Handler] = {
    LeadErasedV1.EVENT_TYPE: on_lead_erased,
    # Batched: a run of these applies with a few statements for the whole run (see runs.CardRun).
    LeadCapturedV1.EVENT_TYPE: Batched(on_leads_captured),
    LeadMergedV1.EVENT_TYPE: Batched(on_leads_merged),
    ActivityRecordedV1.EVENT_TYPE: Batched(on_activities),
    LeadScoredV1.EVENT_TYPE: Batched(on_leads_scored),
    LeadRoutedV1.EVENT_TYPE: Batched(on_leads_routed),
    OutcomeRecordedV1.EVENT_TYPE: Batched(on_outcomes),
    SALES_OUTCOME_TYPE: on_sales_outcome,
}
