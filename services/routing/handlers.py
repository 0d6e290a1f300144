"""Consumed events of routing, one small function each."""

from collections.abc import Sequence

from services.routing.runs import route_scored_leads
from services.routing.service import apply_outcome, erase_lead
from shared.consumer import Batched, Handler
from shared.envelope import CloudEvent
from shared.events import LeadErasedV1, LeadScoredV1, OutcomeRecordedV1, parse_payload
from shared.topics import LEADS_ERASED, LEADS_OUTCOMES, LEADS_SCORED
from shared.uow import Transaction

CONSUMES = (LEADS_SCORED, LEADS_OUTCOMES, LEADS_ERASED)


async def on_leads_scored(tx: Transaction, events: Sequence[CloudEvent]) -> None:
    """Scored leads, a run of them at once: give each to a rep, or queue it."""
    await route_scored_leads(tx, [parse_payload(event, LeadScoredV1) for event in events])


async def on_outcome(tx: Transaction, event: CloudEvent) -> None:
    """What sales did: acceptance stops the SLA timer, a close frees capacity."""
    await apply_outcome(tx, parse_payload(event, OutcomeRecordedV1))


async def on_lead_erased(tx: Transaction, event: CloudEvent) -> None:
    """The lead asked to be forgotten."""
    await erase_lead(tx, parse_payload(event, LeadErasedV1))


HANDLERS: dict[str, Handler] = {
    LeadScoredV1.EVENT_TYPE: Batched(on_leads_scored),
    OutcomeRecordedV1.EVENT_TYPE: on_outcome,
    LeadErasedV1.EVENT_TYPE: on_lead_erased,
}
