"""Consumed events of feedback: every step of every lead's journey."""

from services.feedback.domain import (
    activity_step,
    captured_step,
    merged_step,
    outcome_step,
    routed_step,
    scored_step,
)
from services.feedback.service import record_step
from shared.consumer import Handler
from shared.envelope import CloudEvent
from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadMergedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
    parse_payload,
)
from shared.topics import ALL_TOPICS
from shared.uow import Transaction

CONSUMES = ALL_TOPICS


async def on_lead_captured(tx: Transaction, event: CloudEvent) -> None:
    """Journey starts."""
    await record_step(tx, event_id=event.id, step=captured_step(parse_payload(event, LeadCapturedV1)))


async def on_lead_merged(tx: Transaction, event: CloudEvent) -> None:
    """A resubmission."""
    await record_step(tx, event_id=event.id, step=merged_step(parse_payload(event, LeadMergedV1)))


async def on_activity(tx: Transaction, event: CloudEvent) -> None:
    """An activity of the lead."""
    await record_step(tx, event_id=event.id, step=activity_step(parse_payload(event, ActivityRecordedV1)))


async def on_lead_scored(tx: Transaction, event: CloudEvent) -> None:
    """Scoring's verdict."""
    await record_step(tx, event_id=event.id, step=scored_step(parse_payload(event, LeadScoredV1)))


async def on_lead_routed(tx: Transaction, event: CloudEvent) -> None:
    """Routing's decision."""
    await record_step(tx, event_id=event.id, step=routed_step(parse_payload(event, LeadRoutedV1)))


async def on_outcome(tx: Transaction, event: CloudEvent) -> None:
    """An outcome published by another replica or tool."""
    await record_step(tx, event_id=event.id, step=outcome_step(parse_payload(event, OutcomeRecordedV1)))


HANDLERS: dict[str, Handler] = {
    LeadCapturedV1.EVENT_TYPE: on_lead_captured,
    LeadMergedV1.EVENT_TYPE: on_lead_merged,
    ActivityRecordedV1.EVENT_TYPE: on_activity,
    LeadScoredV1.EVENT_TYPE: on_lead_scored,
    LeadRoutedV1.EVENT_TYPE: on_lead_routed,
    OutcomeRecordedV1.EVENT_TYPE: on_outcome,
}
