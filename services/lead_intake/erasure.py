"""A lead's right to be forgotten, at the front door: personal data removed here, `leads.erased` for the rest."""

from __future__ import annotations

from services.lead_intake import store
from shared.envelope import utc_now
from shared.events import LeadErasedV1
from shared.privacy import PERSONAL_FIELDS, forget_sent_events, mark_erased
from shared.uow import UnitOfWork


async def erase_lead(uow: UnitOfWork, *, lead_id: str, requested_by: str) -> bool:
    """Erase the lead's personal data and announce it (every service erases its copies); False if unknown.
    Erasing twice is harmless and announces once."""
    async with uow.transaction() as tx:
        if await store.erase_lead(tx.session, lead_id=lead_id, personal=sorted(PERSONAL_FIELDS)) is None:
            return False
        if await mark_erased(tx.session, store.metadata, lead_id=lead_id):
            await forget_sent_events(tx.session, store.metadata, lead_id=lead_id)
            await tx.emit(LeadErasedV1(lead_id=lead_id, erased_at=utc_now(), requested_by=requested_by))
    return True
