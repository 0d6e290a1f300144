"""Consumed events of routing, one small function each."""

from services.routing.service import assign_lead
from shared.consumer import Handler
from shared.envelope import CloudEvent
from shared.events import LeadScoredV1, parse_payload
from shared.topics import LEADS_SCORED
from shared.uow import Transaction

CONSUMES = (LEADS_SCORED,)


async def on_lead_scored(tx: Transaction, event: CloudEvent) -> None:
    """A scored lead: assign it to a rep."""
    await assign_lead(tx, parse_payload(event, LeadScoredV1))


HANDLERS: dict[str, Handler] = {LeadScoredV1.EVENT_TYPE: on_lead_scored}
