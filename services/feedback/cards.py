"""How each event changes a lead's card (pure). Events of one lead arrive on different topics, in any order: a card
is started by whichever comes first and completed by the rest."""

from __future__ import annotations

from datetime import datetime

from services.feedback.aggregates import LeadCard
from services.feedback.lifecycle import Lifecycle
from shared.events import LeadCapturedV1, LeadMergedV1, LeadRoutedV1, LeadScoredV1, OutcomeRecordedV1
from shared.privacy import ERASED

TOUCHES = frozenset({"accepted", "contacted", "meeting_booked", "qualified", "won", "lost", "disqualified"})


def started(card: LeadCard | None, lead_id: str, at: datetime) -> LeadCard:
    """The card, or a new one dated `at` until the capture event says when the lead arrived."""
    return card if card is not None else LeadCard(lead_id=lead_id, captured_at=at)


def on_captured(card: LeadCard | None, captured: LeadCapturedV1) -> LeadCard:
    """The lead's origin and segment, as captured."""
    base = started(card, captured.lead_id, captured.captured_at)
    return base.with_(
        captured_at=captured.captured_at,
        email=None if captured.email == ERASED else captured.email,
        source=captured.utm_source,
        medium=captured.utm_medium,
        campaign=captured.utm_campaign,
        last_campaign=base.last_campaign or captured.utm_campaign,
        form=captured.form_id,
        country=captured.country,
        region=captured.region,
        company_size=captured.company_size,
        industry=captured.industry,
        seniority=captured.seniority,
        interests=tuple(captured.interests),
        competitor=captured.current_solution,
    )


def on_merged(card: LeadCard | None, merged: LeadMergedV1) -> LeadCard:
    """A resubmission: the latest campaign is the last touch; fields the lead left empty before are filled in."""
    base = started(card, merged.lead_id, merged.merged_at)
    return base.with_(
        email=None if merged.email == ERASED else merged.email,
        last_campaign=merged.utm_campaign or base.last_campaign,
        country=base.country or merged.country,
        region=base.region or merged.region,
        company_size=base.company_size or merged.company_size,
        industry=base.industry or merged.industry,
        seniority=merged.seniority or base.seniority,
        interests=tuple(dict.fromkeys((*base.interests, *merged.interests))),
        competitor=merged.current_solution or base.competitor,
    )


def on_scored(card: LeadCard | None, scored: LeadScoredV1) -> LeadCard:
    """Scoring's verdict; the first `qualified` makes the lead an MQL (again, after a recycle)."""
    base = started(card, scored.lead_id, scored.scored_at)
    qualified = scored.verdict == "qualified"
    return base.with_(
        score=scored.score,
        grade=scored.grade,
        verdict=scored.verdict,
        predicted=scored.learned_probability,
        qualified_at=base.qualified_at or (scored.scored_at if qualified else None),
        recycled_requalified=base.recycled_requalified or (qualified and base.state == "recycled"),
    )


def on_routed(card: LeadCard | None, routed: LeadRoutedV1) -> LeadCard:
    """Routing's decisions: the owner, the first assignment's time, SLA misses, the rep's acceptance."""
    base = started(card, routed.lead_id, routed.routed_at)
    if routed.kind in ("assigned", "reassigned") and routed.rep_id:
        return base.with_(rep_id=routed.rep_id, team=routed.team, assigned_at=base.assigned_at or routed.routed_at)
    if routed.kind == "sla_breached":
        return base.with_(sla_missed_by=(*base.sla_missed_by, routed.previous_rep_id or routed.rep_id or "unknown"))
    if routed.kind == "accepted":
        return _touched(base, routed.routed_at).with_(
            accepted_at=base.accepted_at or routed.routed_at, sla_met=base.sla_met or not base.sla_missed_by
        )
    return base


def on_outcome(card: LeadCard, outcome: OutcomeRecordedV1) -> LeadCard:
    """Sales' verdict, through the lifecycle; raises ImpossibleTransition when it cannot follow the lead's state."""
    lifecycle = Lifecycle(card.state, card.stage).after(outcome.kind)
    at = outcome.occurred_at
    updated = card.with_(state=lifecycle.state, stage=lifecycle.stage)
    if outcome.kind in TOUCHES:
        updated = _touched(updated, at)
    if outcome.rep_id and updated.rep_id is None:
        updated = updated.with_(rep_id=outcome.rep_id)
    match outcome.kind:
        case "accepted":
            return updated.with_(accepted_at=card.accepted_at or at, sla_met=card.sla_met or not card.sla_missed_by)
        case "qualified":
            return updated.with_(sql_at=card.sql_at or at)
        case "won":
            return updated.with_(won_at=at, won_amount=outcome.amount, currency=outcome.currency,
                                 recycled_won=card.recycled > 0)  # fmt: skip
        case "lost" | "disqualified":
            return updated.with_(lost_at=at, lost_reason=outcome.reason, lost_to=outcome.competitor)
        case "recycled":
            return updated.with_(recycled=card.recycled + 1)
        case "reopened":
            return updated.with_(won_at=None, won_amount=None, lost_at=None, lost_reason=None, lost_to=None)
    return updated


def _touched(card: LeadCard, at: datetime) -> LeadCard:
    return card.with_(touched_at=card.touched_at or at)
