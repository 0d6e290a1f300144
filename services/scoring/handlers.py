"""Consumed events of scoring, one small function each."""

from services.scoring.service import score_captured_lead
from shared.consumer import Handler
from shared.envelope import CloudEvent
from shared.events import LeadCapturedV1, LeadMergedV1, parse_payload
from shared.topics import LEADS_CAPTURED
from shared.uow import Transaction

CONSUMES = (LEADS_CAPTURED,)


async def on_lead_captured(tx: Transaction, event: CloudEvent) -> None:
    """A new lead: score it."""
    await score_captured_lead(tx, parse_payload(event, LeadCapturedV1))


async def on_lead_merged(tx: Transaction, event: CloudEvent) -> None:
    """A resubmission: score the lead as it now stands."""
    await score_captured_lead(tx, parse_payload(event, LeadMergedV1))


HANDLERS: dict[str, Handler] = {LeadCapturedV1.EVENT_TYPE: on_lead_captured, LeadMergedV1.EVENT_TYPE: on_lead_merged}
