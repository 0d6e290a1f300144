"""Use cases of lead_intake: each stores its change and its events in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from services.lead_intake import store
from services.lead_intake.domain import Lead, company_domain_of, merge_lead
from shared.envelope import utc_now
from shared.events import ActivityRecordedV1, LeadCapturedV1, LeadMergedV1
from shared.uow import Transaction, UnitOfWork

CaptureStatus = Literal["captured", "merged", "unchanged"]
BeforeCommit = Callable[[Transaction, str, CaptureStatus], Awaitable[None]]


class UnknownLead(LookupError):
    """An activity names a lead id Baton does not know."""


@dataclass(frozen=True)
class Activity:
    """Something a lead did, as a form or tracking script reports it."""

    kind: str
    occurred_at: datetime
    url: str | None = None
    title: str | None = None
    properties: dict[str, str] | None = None


def new_lead_id() -> str:
    """A fresh lead id."""
    return str(uuid.uuid4())


async def capture_lead(
    uow: UnitOfWork,
    lead: Lead,
    *,
    renewed_interest: bool = True,
    before_commit: BeforeCommit | None = None,
) -> tuple[str, CaptureStatus]:
    """Store a submitted lead, or merge it into the lead with the same email, and emit the event.

    A resubmission from a form is renewed interest even if nothing changed; a re-imported row that changes
    nothing emits nothing.
    """
    for attempt in range(2):
        try:
            async with uow.transaction() as tx:
                existing = await store.find_lead_by_email(tx.session, email=lead.email)
                stored, status = await _apply(tx, existing, lead, renewed_interest=renewed_interest)
                if before_commit is not None:
                    await before_commit(tx, stored.lead_id, status)
            return stored.lead_id, status
        except IntegrityError:
            if attempt:
                raise  # a concurrent request stored the same email first; the retry finds it
    raise AssertionError("unreachable")


async def capture_leads(uow: UnitOfWork, leads: Sequence[Lead]) -> list[tuple[str, CaptureStatus]]:
    """Capture a batch (an import) in one transaction: dedupe within the batch and against stored leads."""
    async with uow.transaction() as tx:
        known = await store.find_leads_by_email(tx.session, emails=sorted({lead.email for lead in leads}))
        results = []
        for lead in leads:
            stored, status = await _apply(tx, known.get(lead.email), lead, renewed_interest=False)
            known[lead.email] = stored
            results.append((stored.lead_id, status))
    return results


async def _apply(
    tx: Transaction, existing: Lead | None, lead: Lead, *, renewed_interest: bool
) -> tuple[Lead, CaptureStatus]:
    """Insert or merge; returns the lead as now stored."""
    lead = replace(lead, company_domain=lead.company_domain or company_domain_of(lead.email))
    if existing is None:
        await store.insert_lead(tx.session, lead=lead)
        await tx.emit(LeadCapturedV1(**asdict(lead)))
        await _attach_held_activities(tx, lead)
        return lead, "captured"
    merged, changes = merge_lead(existing, lead)
    if not changes and not renewed_interest:
        return existing, "unchanged"
    now = utc_now()
    if changes:
        await store.update_lead(tx.session, lead=merged, changes=changes, source=lead.form_id or "api", at=now)
    await tx.emit(
        LeadMergedV1(**asdict(merged), changed_fields=tuple(changes), renewed_interest=renewed_interest, merged_at=now)
    )
    return merged, "merged"


async def _attach_held_activities(tx: Transaction, lead: Lead) -> None:
    # Anonymous-to-known: what this email did before it became a lead now belongs to the lead.
    for held in await store.take_held_activities(tx.session, email=lead.email):
        await tx.emit(_activity_event(lead.lead_id, held))


def _activity_event(lead_id: str, values: dict[str, Any]) -> ActivityRecordedV1:
    return ActivityRecordedV1(
        lead_id=lead_id,
        activity_id=values["activity_id"],
        kind=values["kind"],
        occurred_at=values["occurred_at"],
        url=values.get("url"),
        title=values.get("title"),
        properties=values.get("properties") or {},
    )


async def record_activity(
    uow: UnitOfWork, activity: Activity, *, lead_id: str | None, email: str | None
) -> tuple[str, Literal["recorded", "held"]]:
    """Emit an activity of a known lead; an unknown email's activity is held until that lead arrives."""
    values = {**asdict(activity), "activity_id": str(uuid.uuid4()), "properties": activity.properties or {}}
    async with uow.transaction() as tx:
        if lead_id is not None:
            if await store.lead_exists(tx.session, lead_id=lead_id) is None:
                raise UnknownLead(lead_id)
        else:
            assert email is not None
            known = await store.find_lead_by_email(tx.session, email=email)
            if known is None:
                await store.hold_activity(tx.session, email=email, **values)
                return values["activity_id"], "held"
            lead_id = known.lead_id
        await tx.emit(_activity_event(lead_id, values))
    return values["activity_id"], "recorded"
