"""Consumed events of routing, one small function each."""

from services.routing.service import apply_outcome, route_scored_lead
from shared.consumer import Handler
from shared.envelope import CloudEvent
from shared.events import LeadScoredV1, OutcomeRecordedV1, parse_payload
from shared.topics import LEADS_OUTCOMES, LEADS_SCORED
from shared.uow import Transaction

CONSUMES = (LEADS_SCORED, LEADS_OUTCOMES)


async def on_lead_scored(tx: Transaction, event: CloudEvent) -> None:
    """A scored lead: give it to a rep, or queue it."""
    await route_scored_lead(tx, parse_payload(event, LeadScoredV1))


async def on_outcome(tx: Transaction, event: CloudEvent) -> None:
    """What sales did: acceptance stops the SLA timer, a close frees capacity."""
    await apply_outcome(tx, parse_payload(event, OutcomeRecordedV1))


HANDLERS: dict[str, Handler] = {LeadScoredV1.EVENT_TYPE: on_lead_scored, OutcomeRecordedV1.EVENT_TYPE: on_outcome}
