"""Use cases of scoring: score a lead, store the score and emit `leads.scored` in one transaction."""

from __future__ import annotations

from dataclasses import asdict

from services.scoring import store
from services.scoring.domain import LeadFacts, score_lead
from shared.envelope import utc_now
from shared.events import LeadCapturedV1, LeadScoredV1, ScoreContribution
from shared.uow import Transaction


async def score_captured_lead(tx: Transaction, captured: LeadCapturedV1) -> None:
    """Score a newly captured lead."""
    facts = LeadFacts(
        company_domain=captured.company_domain,
        company=captured.company,
        job_title=captured.job_title,
        phone=captured.phone,
        country=captured.country,
    )
    score = score_lead(facts)
    contributions = [asdict(contribution) for contribution in score.contributions]
    scored_at = utc_now()
    await store.save_score(
        tx.session,
        lead_id=captured.lead_id,
        score=score.value,
        verdict=score.verdict,
        model_version=score.model_version,
        contributions=contributions,
        scored_at=scored_at,
    )
    await tx.emit(
        LeadScoredV1(
            lead_id=captured.lead_id,
            score=score.value,
            verdict=score.verdict,
            model_version=score.model_version,
            contributions=tuple(ScoreContribution(**c) for c in contributions),
            company_domain=captured.company_domain,
            scored_at=scored_at,
        )
    )
