"""Scoring rules: a 0-100 fit score whose contributions explain it."""

from __future__ import annotations

import pytest

from services.scoring.domain import MODEL_VERSION, QUALIFIED_THRESHOLD, LeadFacts, score_lead

NOTHING = LeadFacts(company_domain=None, company=None, job_title=None, phone=None, country=None)
EVERYTHING = LeadFacts(
    company_domain="acme.test", company="Acme", job_title="VP Sales", phone="+44 20 7946 0000", country="GB"
)


def _facts(**values: str | None) -> LeadFacts:
    return LeadFacts(
        **{"company_domain": None, "company": None, "job_title": None, "phone": None, "country": None, **values}
    )


def test_lead_with_nothing_known_scores_zero_and_is_nurtured() -> None:
    score = score_lead(NOTHING)
    assert (score.value, score.verdict, score.contributions) == (0, "nurture", ())
    assert score.model_version == MODEL_VERSION


def test_contributions_add_up_to_the_score_and_say_why() -> None:
    score = score_lead(EVERYTHING)
    assert [c.rule for c in score.contributions] == [
        "business_email",
        "senior_title",
        "company_named",
        "phone_given",
        "country_given",
    ]
    assert score.value == sum(c.points for c in score.contributions) == 90
    reasons = " | ".join(c.reason for c in score.contributions)
    for fact in ("acme.test", "VP Sales", "'vp'", "Acme", "phone", "GB"):
        assert fact in reasons


def test_score_never_exceeds_100() -> None:
    assert 0 <= score_lead(EVERYTHING).value <= 100


def test_qualified_exactly_at_the_threshold() -> None:
    score = score_lead(_facts(company_domain="acme.test", company="Acme", country="GB"))
    assert score.value == QUALIFIED_THRESHOLD
    assert score.verdict == "qualified"


def test_nurture_just_below_the_threshold() -> None:
    score = score_lead(_facts(company_domain="acme.test", phone="123"))
    assert score.value == QUALIFIED_THRESHOLD - 5
    assert score.verdict == "nurture"


@pytest.mark.parametrize("title", ["CEO", "Head of Growth", "Marketing Director", "vice president, sales", "Founder"])
def test_senior_titles_earn_points(title: str) -> None:
    [contribution] = score_lead(_facts(job_title=title)).contributions
    assert (contribution.rule, contribution.points) == ("senior_title", 25)


@pytest.mark.parametrize("title", ["Engineer", "Student", "", "Sales Associate"])
def test_other_titles_earn_nothing(title: str) -> None:
    assert score_lead(_facts(job_title=title)).contributions == ()


@pytest.mark.parametrize("title", ["Contractor", "Headhunter", "VPN Engineer"])
def test_titles_merely_containing_a_senior_word_earn_nothing(title: str) -> None:
    assert score_lead(_facts(job_title=title)).contributions == ()


def test_senior_title_is_explained_by_the_word_it_contains() -> None:
    [contribution] = score_lead(_facts(job_title="Director of Sales")).contributions
    assert "'director'" in contribution.reason
