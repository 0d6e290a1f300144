"""Pure rules of feedback: each event becomes one explained step of the lead's journey."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadMergedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
)


@dataclass(frozen=True)
class JourneyStep:
    """One step of a lead's journey: what happened, when, who acted and why."""

    lead_id: str
    step: str
    occurred_at: datetime
    actor: str
    reason: str
    details: dict[str, Any]


def captured_step(captured: LeadCapturedV1) -> JourneyStep:
    """The lead arrived from a form or tool."""
    origin = ", ".join(
        f"{name}={value}"
        for name, value in (
            ("form", captured.form_id),
            ("source", captured.utm_source),
            ("campaign", captured.utm_campaign),
        )
        if value
    )
    return JourneyStep(
        captured.lead_id,
        "captured",
        captured.captured_at,
        "lead_intake",
        f"captured {captured.email}" + (f" ({origin})" if origin else ""),
        {"company": captured.company, "country": captured.country},
    )


def merged_step(merged: LeadMergedV1) -> JourneyStep:
    """The lead submitted again: what changed, and the renewed interest it shows."""
    changed = ", ".join(merged.changed_fields) or "nothing new"
    origin = f" via form {merged.form_id}" if merged.form_id else ""
    return JourneyStep(
        merged.lead_id,
        "merged",
        merged.merged_at,
        "lead_intake",
        f"submitted again{origin}; changed: {changed}",
        {"changed_fields": list(merged.changed_fields), "renewed_interest": merged.renewed_interest},
    )


def activity_step(activity: ActivityRecordedV1) -> JourneyStep:
    """Something the lead did."""
    what = activity.title or activity.url or ""
    return JourneyStep(
        activity.lead_id,
        f"activity:{activity.kind}",
        activity.occurred_at,
        "lead",
        f"{activity.kind}" + (f": {what}" if what else ""),
        {"activity_id": activity.activity_id, "url": activity.url, **activity.properties},
    )


def scored_step(scored: LeadScoredV1) -> JourneyStep:
    """Scoring's verdict, explained by its contributions."""
    because = "; ".join(f"{c.reason} (+{c.points})" for c in scored.contributions) or "no rule matched"
    return JourneyStep(
        scored.lead_id,
        "scored",
        scored.scored_at,
        "scoring",
        f"score {scored.score}, {scored.verdict} by {scored.model_version}: {because}",
        {
            "score": scored.score,
            "verdict": scored.verdict,
            "model_version": scored.model_version,
            "grade": scored.grade,
            "went_cold": scored.went_cold,
            "contributions": [c.model_dump() for c in scored.contributions],
        },
    )


def routed_step(routed: LeadRoutedV1) -> JourneyStep:
    """Routing's decision and its reason."""
    details = {"assignment_id": routed.assignment_id, "rep_id": routed.rep_id, "rep_name": routed.rep_name}
    deadline = routed.sla_deadline.isoformat() if routed.sla_deadline else None
    extras = {"previous_rep_id": routed.previous_rep_id, "rule": routed.rule, "pool": routed.pool,
              "sla_deadline": deadline, "manager": routed.manager}  # fmt: skip
    details.update({name: value for name, value in extras.items() if value is not None})
    return JourneyStep(routed.lead_id, ROUTING_STEPS[routed.kind], routed.routed_at, "routing", routed.reason, details)


# What each leads.routed kind is called in a journey.
ROUTING_STEPS = {
    "assigned": "routed",
    "reassigned": "reassigned",
    "unassigned": "unassigned",
    "sla_breached": "sla_missed",
    "escalated": "escalated",
    "accepted": "accepted_by_rep",
}


def outcome_step(outcome: OutcomeRecordedV1) -> JourneyStep:
    """What sales reported."""
    extras = [
        f"{name} {value}"
        for name, value in (
            ("amount", f"{outcome.amount} {outcome.currency or ''}".strip() if outcome.amount is not None else None),
            ("reason", outcome.reason),
            ("competitor", outcome.competitor),
        )
        if value
    ]
    actor = f"sales:{outcome.rep_id}" if outcome.rep_id else "sales"
    return JourneyStep(
        outcome.lead_id,
        f"outcome:{outcome.kind}",
        outcome.occurred_at,
        actor,
        outcome.kind + (f" ({', '.join(extras)})" if extras else ""),
        {"outcome_id": outcome.outcome_id, "external_id": outcome.external_id},
    )
