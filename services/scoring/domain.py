"""Pure scoring rules: lead facts in, score with its explanation out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MODEL_VERSION = "rules-v1"
QUALIFIED_THRESHOLD = 50
SENIOR_TITLE_WORDS = (
    "chief",
    "ceo",
    "cto",
    "cfo",
    "cmo",
    "vp",
    "vice president",
    "head",
    "director",
    "founder",
    "owner",
    "partner",
    "president",
    "manager",
    "lead",
)

Verdict = Literal["qualified", "nurture"]


@dataclass(frozen=True)
class LeadFacts:
    """What scoring knows about a lead."""

    company_domain: str | None
    company: str | None
    job_title: str | None
    phone: str | None
    country: str | None


@dataclass(frozen=True)
class Contribution:
    """Points one rule gave, and why."""

    rule: str
    points: int
    reason: str


@dataclass(frozen=True)
class Score:
    """A lead's score, verdict and the contributions that explain it."""

    value: int
    verdict: Verdict
    model_version: str
    contributions: tuple[Contribution, ...]


def score_lead(facts: LeadFacts) -> Score:
    """Fit score 0-100 from the starter rules; `qualified` at or above the threshold."""
    contributions = tuple(c for c in _contributions(facts) if c is not None)
    value = max(0, min(100, sum(c.points for c in contributions)))
    verdict: Verdict = "qualified" if value >= QUALIFIED_THRESHOLD else "nurture"
    return Score(value=value, verdict=verdict, model_version=MODEL_VERSION, contributions=contributions)


def seniority_word(job_title: str) -> str | None:
    """The first senior word or phrase that stands as whole words in the title ("Contractor" is not a CTO)."""
    words = re.findall(r"[a-z]+", job_title.lower())
    padded = f" {' '.join(words)} "
    return next((word for word in SENIOR_TITLE_WORDS if f" {word} " in padded), None)


def _contributions(facts: LeadFacts) -> list[Contribution | None]:
    senior_word = seniority_word(facts.job_title or "")
    return [
        Contribution("business_email", 30, f"business email at {facts.company_domain}")
        if facts.company_domain
        else None,
        Contribution("senior_title", 25, f"job title {facts.job_title!r} contains {senior_word!r}")
        if senior_word
        else None,
        Contribution("company_named", 15, f"company {facts.company!r} given") if facts.company else None,
        Contribution("phone_given", 15, "phone number given") if facts.phone else None,
        Contribution("country_given", 5, f"country {facts.country} given") if facts.country else None,
    ]
