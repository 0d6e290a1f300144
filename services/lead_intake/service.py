"""Use cases of lead_intake: each stores its change and its events in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError

from services.lead_intake import store
from services.lead_intake.domain import Lead, company_domain_of, lead_values, merge_lead
from shared.envelope import utc_now
from shared.events import ActivityRecordedV1, EventPayload, LeadCapturedV1, LeadMergedV1
from shared.uow import Transaction, UnitOfWork

CaptureStatus = Literal["captured", "merged", "unchanged"]
BeforeCommit = Callable[[Transaction, str, CaptureStatus], Awaitable[None]]
TraceHeaders = list[list[str]]  # a request's trace context as outbox headers (shared.tracing.trace_headers)


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

    A resubmission from a form is renewed interest even if nothing changed.
    """
    for attempt in range(2):
        try:
            async with uow.transaction() as tx:
                [(lead_id, status)] = await _capture_batch(tx, [lead], renewed_interest=renewed_interest)
                if before_commit is not None:
                    await before_commit(tx, lead_id, status)
            return lead_id, status
        except IntegrityError:
            if attempt:
                raise  # a concurrent request stored the same email first; the retry finds it
    raise AssertionError("unreachable")


async def capture_submissions(
    uow: UnitOfWork, leads: Sequence[Lead], *, traces: Sequence[TraceHeaders]
) -> list[tuple[str, CaptureStatus]]:
    """Capture many form submissions in one transaction, each as if submitted alone and in this order; the events
    of each continue the trace of its request (`traces`, one per lead).

    On PostgreSQL the first attempt assumes every email is new: it skips the lookup and writes at once (one round
    trip, no BEGIN, no COMMIT). An email stored already, or with activities held, fails that attempt whole
    (IntegrityError), and the batch is captured again the usual way, reading first."""
    for attempt in range(3):
        try:
            async with uow.transaction() as tx:
                assume_new = attempt == 0 and tx.keeps_writes
                return await _capture_batch(tx, leads, renewed_interest=True, traces=traces, assume_new=assume_new)
        except IntegrityError:
            if attempt == 2:
                raise  # a concurrent request stored one of these emails first; the retry merges into it
    raise AssertionError("unreachable")


async def capture_leads(uow: UnitOfWork, leads: Sequence[Lead]) -> list[tuple[str, CaptureStatus]]:
    """Capture a batch (an import) in one transaction; a re-imported row that changes nothing emits nothing."""
    async with uow.transaction() as tx:
        return await _capture_batch(tx, leads, renewed_interest=False)


async def _capture_batch(
    tx: Transaction,
    submitted: Sequence[Lead],
    *,
    renewed_interest: bool,
    traces: Sequence[TraceHeaders] | None = None,
    assume_new: bool = False,
) -> list[tuple[str, CaptureStatus]]:
    """Dedupe a batch within itself and against stored leads, then write it with a few statements.

    New leads are inserted together at the end, so a duplicate within the batch merges in memory; events keep
    the order of the rows. `assume_new`: no stored lead is looked up, and the insert fails (IntegrityError) if an
    email was stored, or has activities held (PostgreSQL).
    """
    emails = sorted({lead.email for lead in submitted})
    stored, any_held = ({}, False) if assume_new else await store.find_leads_noting_held(tx.session, emails=emails)
    held = {}
    if any_held:
        held = await store.take_held_activities(tx.session, emails=[email for email in emails if email not in stored])
    batch = _Batch(stored=stored, held=held, at=utc_now())
    results: list[tuple[str, CaptureStatus]] = []
    caused_by: list[int] = []  # for each event, the position of the submission behind it
    for position, lead in enumerate(submitted):
        results.append(batch.add(lead, renewed_interest=renewed_interest))
        caused_by.extend([position] * (len(batch.events) - len(caused_by)))
    if assume_new:
        await store.insert_unknown_leads(tx.session, new_leads=list(batch.new.values()))
    else:
        await store.insert_leads(tx.session, new_leads=list(batch.new.values()))
    for lead, changed in batch.updated.values():
        await store.update_lead(tx.session, lead=lead, changed=sorted(changed), at=batch.at)
    await store.add_history(tx.session, entries=batch.history)
    if traces is None:
        await tx.emit_all(batch.events)
    else:
        await _emit_in_their_traces(tx, batch.events, [traces[position] for position in caused_by])
    return results


async def _emit_in_their_traces(
    tx: Transaction, events: Sequence[EventPayload], traces: Sequence[TraceHeaders]
) -> None:
    """Emit each event in the trace of the request behind it. The transaction reads one trace per lead id, so a lead
    id met again under another trace (one email submitted twice in the batch) starts another statement."""
    start, by_lead = 0, dict[str, TraceHeaders]()
    for index, (event, trace) in enumerate(zip(events, traces, strict=True)):
        lead_id = str(getattr(event, "lead_id", ""))
        if by_lead.get(lead_id, trace) != trace:
            tx.traces_by_lead = by_lead
            await tx.emit_all(events[start:index])
            start, by_lead = index, {}
        by_lead[lead_id] = trace
    tx.traces_by_lead = by_lead
    await tx.emit_all(events[start:])
    tx.traces_by_lead = {}


@dataclass
class _Batch:
    """The effects of a batch, decided in memory before anything is written."""

    stored: dict[str, Lead]
    held: dict[str, list[dict[str, Any]]]
    at: datetime
    new: dict[str, Lead] = field(default_factory=dict)
    updated: dict[str, tuple[Lead, set[str]]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[EventPayload] = field(default_factory=list)

    def add(self, lead: Lead, *, renewed_interest: bool) -> tuple[str, CaptureStatus]:
        lead = replace(lead, company_domain=lead.company_domain or company_domain_of(lead.email))
        existing = self.new.get(lead.email) or self.stored.get(lead.email)
        if existing is None:
            self.new[lead.email] = lead
            self.events.append(LeadCapturedV1(**lead_values(lead)))
            self.events.extend(_activity_event(lead.lead_id, held) for held in self.held.get(lead.email, ()))
            return lead.lead_id, "captured"
        merged, changes = merge_lead(existing, lead)
        if not changes and not renewed_interest:
            return existing.lead_id, "unchanged"
        self._keep(merged, changes, source=lead.form_id or "api")
        self.events.append(
            LeadMergedV1(
                **lead_values(merged),
                changed_fields=tuple(changes),
                renewed_interest=renewed_interest,
                merged_at=self.at,
            )
        )
        return existing.lead_id, "merged"

    def _keep(self, merged: Lead, changes: dict[str, list[Any]], *, source: str) -> None:
        if not changes:
            return
        if merged.email in self.new:
            self.new[merged.email] = merged
        else:
            self.stored[merged.email] = merged
            _, changed = self.updated.get(merged.email, (merged, set()))
            self.updated[merged.email] = (merged, changed | set(changes))
        self.history.append({"lead_id": merged.lead_id, "changed_at": self.at, "source": source, "changes": changes})


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
