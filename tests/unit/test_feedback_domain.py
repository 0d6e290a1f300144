"""Feedback: each event becomes one explained step of the lead's journey."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.feedback.domain import captured_step, outcome_step, routed_step, scored_step
from shared.events import LeadCapturedV1, LeadRoutedV1, LeadScoredV1, OutcomeRecordedV1, ScoreContribution

AT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def _routed(kind: str, rep_id: str | None) -> LeadRoutedV1:
    return LeadRoutedV1.model_validate(
        {
            "lead_id": "lead-1",
            "assignment_id": "a-1",
            "kind": kind,
            "rep_id": rep_id,
            "rep_name": "Aiko" if rep_id else None,
            "reason": "round robin over 1 active rep(s)" if rep_id else "no active rep",
            "score": 60,
            "routed_at": AT,
        }
    )


def _outcome(**values: object) -> OutcomeRecordedV1:
    return OutcomeRecordedV1.model_validate({"lead_id": "lead-1", "outcome_id": "o-1", "occurred_at": AT, **values})


def test_captured_step_says_where_the_lead_came_from() -> None:
    captured = LeadCapturedV1(
        lead_id="lead-1", email="ada@acme.test", form_id="demo", utm_source="ads", company="Acme", captured_at=AT
    )
    step = captured_step(captured)
    assert (step.lead_id, step.step, step.occurred_at, step.actor) == ("lead-1", "captured", AT, "lead_intake")
    assert step.reason == "captured ada@acme.test (form=demo, source=ads)"
    assert step.details == {"company": "Acme", "country": None}


def test_captured_step_without_origin_names_only_the_email() -> None:
    step = captured_step(LeadCapturedV1(lead_id="lead-1", email="ada@acme.test", captured_at=AT))
    assert step.reason == "captured ada@acme.test"


def test_scored_step_explains_score_verdict_and_contributions() -> None:
    scored = LeadScoredV1(
        lead_id="lead-1",
        score=45,
        verdict="nurture",
        model_version="rules-v1",
        contributions=(
            ScoreContribution(rule="business_email", points=30, reason="business email at acme.test"),
            ScoreContribution(rule="company_named", points=15, reason="company 'Acme' given"),
        ),
        scored_at=AT,
    )
    step = scored_step(scored)
    assert (step.step, step.actor) == ("scored", "scoring")
    assert step.reason == (
        "score 45, nurture by rules-v1: business email at acme.test (+30); company 'Acme' given (+15)"
    )
    assert (
        step.details["contributions"][0] | {"rule": "business_email", "points": 30} == step.details["contributions"][0]
    )


def test_scored_step_without_contributions_says_no_rule_matched() -> None:
    scored = LeadScoredV1(
        lead_id="lead-1", score=0, verdict="nurture", model_version="rules-v1", contributions=(), scored_at=AT
    )
    assert scored_step(scored).reason.endswith("no rule matched")


def test_assigned_lead_is_a_routed_step_naming_the_rep() -> None:
    step = routed_step(_routed("assigned", "rep-a"))
    assert (step.step, step.actor, step.reason) == ("routed", "routing", "round robin over 1 active rep(s)")
    assert step.details == {"assignment_id": "a-1", "rep_id": "rep-a", "rep_name": "Aiko"}


def test_unassigned_lead_is_an_unassigned_step() -> None:
    step = routed_step(_routed("unassigned", None))
    assert (step.step, step.reason) == ("unassigned", "no active rep")


def test_won_outcome_reason_includes_the_amount() -> None:
    step = outcome_step(_outcome(kind="won", amount=Decimal("1200.50"), currency="EUR", rep_id="rep-a"))
    assert (step.step, step.actor, step.reason) == ("outcome:won", "sales:rep-a", "won (amount 1200.50 EUR)")


def test_lost_outcome_reason_includes_reason_and_competitor() -> None:
    step = outcome_step(_outcome(kind="lost", reason="price", competitor="Globex", external_id="crm-9"))
    assert (step.actor, step.reason) == ("sales", "lost (reason price, competitor Globex)")
    assert step.details == {"outcome_id": "o-1", "external_id": "crm-9"}


def test_zero_amount_is_still_reported() -> None:
    assert outcome_step(_outcome(kind="won", amount=Decimal("0"), currency="EUR")).reason == "won (amount 0 EUR)"


def test_outcome_without_extras_is_just_its_kind() -> None:
    assert outcome_step(_outcome(kind="contacted")).reason == "contacted"
