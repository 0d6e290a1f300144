"""Use cases of lead_intake: store the lead and its event in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import asdict, replace
from typing import Literal

from sqlalchemy.exc import IntegrityError

from services.lead_intake import store
from services.lead_intake.domain import Lead, company_domain_of
from shared.events import LeadCapturedV1
from shared.uow import UnitOfWork

CaptureStatus = Literal["captured", "merged"]


async def capture_lead(uow: UnitOfWork, lead: Lead) -> tuple[str, CaptureStatus]:
    """Store a submitted lead and emit `leads.captured`; an email seen before keeps its lead id."""
    lead = replace(lead, company_domain=lead.company_domain or company_domain_of(lead.email))
    for _ in range(2):
        try:
            return await _capture_once(uow, lead)
        except IntegrityError:
            continue  # a concurrent request stored the same email first; the retry finds it
    raise RuntimeError(f"could not store lead for {lead.email}")


async def _capture_once(uow: UnitOfWork, lead: Lead) -> tuple[str, CaptureStatus]:
    async with uow.transaction() as tx:
        existing = await store.find_lead_id_by_email(tx.session, email=lead.email)
        if existing is not None:
            return existing, "merged"
        await store.insert_lead(tx.session, lead=lead)
        await tx.emit(LeadCapturedV1(**asdict(lead)))
    return lead.lead_id, "captured"


def new_lead_id() -> str:
    """A fresh lead id."""
    return str(uuid.uuid4())
