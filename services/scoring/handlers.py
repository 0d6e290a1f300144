"""Consumed events of scoring, one small function each."""

from services.scoring import service
from shared.consumer import Handler
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


async def on_lead_captured(tx: Transaction, event: CloudEvent) -> None:
    """A new lead: keep its facts and score it."""
    await service.on_lead_captured(tx, parse_payload(event, LeadCapturedV1))


async def on_lead_merged(tx: Transaction, event: CloudEvent) -> None:
    """A resubmission: the lead as it now stands, and renewed interest."""
    await service.on_lead_captured(tx, parse_payload(event, LeadMergedV1))


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
    LeadCapturedV1.EVENT_TYPE: on_lead_captured,
    LeadMergedV1.EVENT_TYPE: on_lead_merged,
    ActivityRecordedV1.EVENT_TYPE: on_activity,
    OutcomeRecordedV1.EVENT_TYPE: on_outcome,
}
