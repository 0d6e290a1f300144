"""Event payloads: frozen, versioned models, one per CloudEvents type. The only module that defines them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared import topics
from shared.envelope import CloudEvent, InvalidEvent


class EventPayload(BaseModel):
    """Base of every payload: immutable, strict about unknown versions, lenient about new optional fields."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    EVENT_TYPE: ClassVar[str]
    TOPIC: ClassVar[str]

    lead_id: str

    def to_event(self, *, source: str, event_id: str | None = None) -> CloudEvent:
        """Wrap this payload in a CloudEvent keyed by its lead."""
        data = self.model_dump(mode="json")
        if event_id is None:
            return CloudEvent(type=self.EVENT_TYPE, source=source, subject=self.lead_id, data=data)
        return CloudEvent(type=self.EVENT_TYPE, source=source, subject=self.lead_id, data=data, id=event_id)


class LeadCapturedV1(EventPayload):
    """A form (or tool) handed a new lead to Baton."""

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.captured.v1"
    TOPIC: ClassVar[str] = topics.LEADS_CAPTURED

    email: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    job_title: str | None = None
    seniority: str | None = None
    company: str | None = None
    company_domain: str | None = None
    company_size: str | None = None
    industry: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    interests: tuple[str, ...] = ()
    current_solution: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    form_id: str | None = None
    consent_marketing: bool | None = None
    consent_at: datetime | None = None
    consent_wording_version: str | None = None
    attributes: dict[str, str] = {}
    captured_at: datetime


class LeadMergedV1(LeadCapturedV1):
    """A known lead submitted again: the lead as it now stands, what changed, and a sign of renewed interest."""

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.merged.v1"
    TOPIC: ClassVar[str] = topics.LEADS_CAPTURED

    changed_fields: tuple[str, ...] = ()
    renewed_interest: bool = True
    merged_at: datetime


class ActivityRecordedV1(EventPayload):
    """Something a known lead did: a page view, a download, a webinar, a demo request."""

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.activity.v1"
    TOPIC: ClassVar[str] = topics.LEADS_ACTIVITY

    activity_id: str
    kind: str
    occurred_at: datetime
    url: str | None = None
    title: str | None = None
    properties: dict[str, str] = {}


class ScoreContribution(BaseModel):
    """One rule's part in a score: why the lead got these points."""

    model_config = ConfigDict(frozen=True)

    rule: str
    points: int
    reason: str
    kind: Literal["fit", "engagement", "learned"] = "fit"
    # Engagement fades: what the points are worth now, after the model's half-life decay.
    decayed_points: float | None = None


class LeadScoredV1(EventPayload):
    """Scoring's verdict on a lead, with its explanation."""

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.scored.v1"
    TOPIC: ClassVar[str] = topics.LEADS_SCORED

    score: int
    verdict: Literal["qualified", "nurture"]
    model_version: str
    contributions: tuple[ScoreContribution, ...]
    company_domain: str | None = None
    scored_at: datetime
    grade: str | None = None
    fit_score: int | None = None
    engagement_score: int | None = None
    rules_score: int | None = None
    learned_probability: float | None = None
    learned_outcomes: int | None = None
    went_cold: bool = False
    # The lead as scoring knew it (LeadCapturedV1's fields, merges applied), so routing rules can match any field.
    lead: dict[str, Any] = {}


RoutingKind = Literal["assigned", "reassigned", "unassigned", "sla_breached", "escalated", "accepted"]


class LeadRoutedV1(EventPayload):
    """Routing's decision for a lead, and what became of it.

    `assigned`: first owner; `reassigned`: a new owner after an SLA miss, a rejection or a queue wait ended;
    `unassigned`: nobody eligible, the lead waits in `pool`'s queue; `sla_breached`: `previous_rep_id` did not
    accept by the deadline; `escalated`: a rep's misses reached the threshold, `manager` is told;
    `accepted`: the rep took the lead (its SLA timer stops).
    """

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.routed.v1"
    TOPIC: ClassVar[str] = topics.LEADS_ROUTED

    assignment_id: str
    kind: RoutingKind
    rep_id: str | None = None
    rep_name: str | None = None
    reason: str
    score: int
    routed_at: datetime
    rep_email: str | None = None
    team: str | None = None
    pool: str | None = None
    rule: str | None = None
    grade: str | None = None
    verdict: str | None = None
    sla_deadline: datetime | None = None
    previous_rep_id: str | None = None
    manager: str | None = None
    lead: dict[str, Any] = {}


OutcomeKind = Literal[
    "accepted", "contacted", "meeting_booked", "qualified", "disqualified", "won", "lost", "recycled", "reopened"
]


class OutcomeRecordedV1(EventPayload):
    """What sales did with a lead, as reported by a sales tool."""

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.outcome.v1"
    TOPIC: ClassVar[str] = topics.LEADS_OUTCOMES

    outcome_id: str
    kind: OutcomeKind
    amount: Decimal | None = None
    currency: str | None = None
    reason: str | None = None
    competitor: str | None = None
    rep_id: str | None = None
    external_id: str | None = None
    occurred_at: datetime


class LeadErasedV1(EventPayload):
    """The lead asked to be forgotten: every service removes its personal data and keeps anonymous aggregates."""

    EVENT_TYPE: ClassVar[str] = "dev.baton.lead.erased.v1"
    TOPIC: ClassVar[str] = topics.LEADS_ERASED

    erased_at: datetime
    requested_by: str | None = None


PAYLOAD_TYPES: dict[str, type[EventPayload]] = {
    model.EVENT_TYPE: model
    for model in (
        LeadCapturedV1,
        LeadMergedV1,
        ActivityRecordedV1,
        LeadScoredV1,
        LeadRoutedV1,
        OutcomeRecordedV1,
        LeadErasedV1,
    )
}

P = TypeVar("P", bound=EventPayload)


def parse_payload(event: CloudEvent, model: type[P]) -> P:
    """Validate an event's data as `model`; raises InvalidEvent, which sends the record to the DLQ."""
    if event.type != model.EVENT_TYPE:
        raise InvalidEvent(f"expected {model.EVENT_TYPE}, got {event.type}")
    try:
        return model.model_validate(_with_subject(event))
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {event.type} payload: {exc.errors(include_url=False)}") from exc


def _with_subject(event: CloudEvent) -> dict[str, Any]:
    return {"lead_id": event.subject, **event.data}
