"""Consumed events of scoring, one small function each."""

from collections.abc import Sequence

from services.scoring import service
from shared.consumer import Batched, Handler
from shared.envelope import CloudEvent
from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadErasedV1,
    LeadMergedV1,
    OutcomeRecordedV1,
    parse_payload,
)
from shared.topics import LEADS_ACTIVITY, LEADS_CAPTURED, LEADS_ERASED, LEADS_OUTCOMES
from shared.uow import Transaction

CONSUMES = (LEADS_CAPTURED, LEADS_ACTIVITY, LEADS_OUTCOMES, LEADS_ERASED)


async def on_leads_captured(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """New leads, a run at a time: keep their facts and score them."""
    await service.on_leads_captured(tx, [parse_payload(event, LeadCapturedV1) for event in events])


async def on_leads_merged(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Resubmissions, a run at a time: the leads as they now stand, and renewed interest."""
    await service.on_leads_captured(tx, [parse_payload(event, LeadMergedV1) for event in events])


async def on_activity(tx: Transaction, event: CloudEvent) -> None:
    """Something the lead did: engagement."""
    await service.on_activity(tx, parse_payload(event, ActivityRecordedV1))


async def on_outcome(tx: Transaction, event: CloudEvent) -> None:
    """A verdict of sales: the model learns."""
    await service.on_outcome(tx, parse_payload(event, OutcomeRecordedV1))


async def on_lead_erased(tx: Transaction, event: CloudEvent) -> None:
    """The lead asked to be forgotten."""
    await service.on_lead_erased(tx, parse_payload(event, LeadErasedV1))


HANDLERS: dict[str, Handler] = {
    LeadErasedV1.EVENT_TYPE: on_lead_erased,
    LeadCapturedV1.EVENT_TYPE: Batched(on_leads_captured),
    LeadMergedV1.EVENT_TYPE: Batched(on_leads_merged),
    ActivityRecordedV1.EVENT_TYPE: on_activity,
    OutcomeRecordedV1.EVENT_TYPE: on_outcome,
}
