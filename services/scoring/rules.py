"""Scoring models as data marketers own: fit and engagement rules, decay, caps, grades and thresholds.

Validation happens on write and names the exact path of each error; evaluation is pure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from shared.conditions import Operator, Scalar, field_value, holds, is_attribute, operand_problem
from shared.events import LeadCapturedV1, ScoreContribution

RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,64}$")]
# Identity and bookkeeping say nothing about fit; rules may not use them.
NOT_SCORABLE = frozenset({"lead_id", "email", "first_name", "last_name", "phone", "captured_at", "consent_at"})
LEAD_FIELDS = frozenset(LeadCapturedV1.model_fields) - NOT_SCORABLE - {"attributes"}
RESUBMISSION = "resubmission"


class FitRule(BaseModel):
    """Points for who the lead is: `field` (a lead field or `attributes.<name>`) compared with `op`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RuleId
    field: str
    op: Operator
    value: Scalar | list[Scalar] | None = None
    min: float | None = None
    max: float | None = None
    points: int = Field(ge=-100, le=100)
    reason: Annotated[str, StringConstraints(max_length=200)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FitRule:
        if self.field not in LEAD_FIELDS and not is_attribute(self.field):
            raise ValueError(f"unknown field {self.field!r}: use one of {sorted(LEAD_FIELDS)} or attributes.<name>")
        problem = operand_problem(self.op, self.value, self.min, self.max)
        if problem:
            raise ValueError(problem)
        return self


class EngagementRule(BaseModel):
    """Points for what the lead did: each `activity` (or `resubmission`) is worth `points`, fading with age."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RuleId
    activity: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,99}$")]
    points: int = Field(ge=-100, le=100)
    max_points: int | None = Field(default=None, ge=1, le=100)


class ScoringModelDefinition(BaseModel):
    """A whole scoring model: applied whole or not at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fit_rules: list[FitRule] = Field(default_factory=list, max_length=500)
    engagement_rules: list[EngagementRule] = Field(default_factory=list, max_length=200)
    fit_cap: int = Field(60, ge=0, le=100)
    engagement_cap: int = Field(40, ge=0, le=100, validate_default=True)
    half_life_days: float = Field(30.0, gt=0, le=3650)
    qualified_threshold: int = Field(50, ge=1, le=100)
    fit_grades: dict[str, int] = Field(default_factory=lambda: {"A": 45, "B": 30, "C": 15}, validate_default=True)
    engagement_grades: dict[str, int] = Field(
        default_factory=lambda: {"1": 30, "2": 20, "3": 10}, validate_default=True
    )
    learned_weight: float = Field(0.5, ge=0, le=1)

    # Field validators (not one model validator) so that each error's path names the part at fault.
    @field_validator("fit_rules", "engagement_rules")
    @classmethod
    def _unique_ids(cls, rules: list[Any]) -> list[Any]:
        ids = [rule.id for rule in rules]
        duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule ids {duplicates}")
        return rules

    @field_validator("engagement_cap")
    @classmethod
    def _caps_make_100(cls, engagement_cap: int, info: ValidationInfo) -> int:
        fit_cap = info.data.get("fit_cap")
        if fit_cap is not None and fit_cap + engagement_cap != 100:
            raise ValueError(
                f"fit_cap + engagement_cap must be 100 (the score's scale), not {fit_cap + engagement_cap}"
            )
        return engagement_cap

    @field_validator("fit_grades")
    @classmethod
    def _fit_bands(cls, bands: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        _descending(bands, ("A", "B", "C"), info.data.get("fit_cap"))
        return bands

    @field_validator("engagement_grades")
    @classmethod
    def _engagement_bands(cls, bands: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        _descending(bands, ("1", "2", "3"), info.data.get("engagement_cap"))
        return bands


def _descending(bands: Mapping[str, int], order: Sequence[str], cap: int | None) -> None:
    if set(bands) != set(order):
        raise ValueError(f"give exactly the bands {list(order)}, not {sorted(bands)}")
    values = [bands[band] for band in order]
    if any(high <= low for high, low in itertools.pairwise(values)):
        raise ValueError(
            f"thresholds overlap, they must fall strictly from {order[0]} to {order[-1]}: "
            f"{dict(zip(order, values, strict=True))}"
        )
    if cap is not None and values[0] > cap:
        raise ValueError(f"band {order[0]} at {values[0]} can never be reached under the cap {cap}")


STARTER_MODEL = ScoringModelDefinition(
    fit_rules=[
        FitRule(id="business-email", field="company_domain", op="exists", points=15,
                reason="business email"),
        FitRule(id="senior", field="seniority", op="in", value=["director", "vp", "c_level", "owner"], points=20),
        FitRule(id="manager", field="seniority", op="equals", value="manager", points=10),
        FitRule(id="company-named", field="company", op="exists", points=5),
        FitRule(id="mid-market", field="company_size", op="in", value=["51-200", "201-1000", "1001-5000"],
                points=10),
        FitRule(id="uses-competitor", field="current_solution", op="exists", points=5,
                reason="names a current solution (a switching opportunity)"),
        FitRule(id="consented", field="consent_marketing", op="equals", value=True, points=5),
    ],
    engagement_rules=[
        EngagementRule(id="demo", activity="demo_request", points=30),
        EngagementRule(id="pricing", activity="pricing_page_view", points=10, max_points=20),
        EngagementRule(id="webinar", activity="webinar_attended", points=10, max_points=20),
        EngagementRule(id="download", activity="content_download", points=5, max_points=15),
        EngagementRule(id="visits", activity="page_view", points=1, max_points=10),
        EngagementRule(id="email-click", activity="email_click", points=2, max_points=10),
        EngagementRule(id="resubmitted", activity=RESUBMISSION, points=10, max_points=20),
    ],
)  # fmt: skip


@dataclass(frozen=True)
class Touch:
    """Something the lead did, when (activities and resubmissions)."""

    kind: str
    at: datetime


@dataclass(frozen=True)
class RulesScore:
    """What the rules say: fit and engagement parts, the score, grade, verdict and every contribution."""

    fit: int
    engagement: int
    value: int
    grade: str
    contributions: tuple[ScoreContribution, ...]


def score_with_rules(
    model: ScoringModelDefinition, lead: Mapping[str, Any], touches: Iterable[Touch], *, now: datetime
) -> RulesScore:
    """Evaluate a model on a lead and what it did, decayed to `now`."""
    fit_parts = [_fit_contribution(rule, lead) for rule in model.fit_rules]
    fit_contributions = [part for part in fit_parts if part is not None]
    fit = _clamp(sum(part.points for part in fit_contributions), model.fit_cap)
    engagement_contributions = _engagement(model, list(touches), now)
    engagement = _clamp(round(sum(part.decayed_points or 0 for part in engagement_contributions)), model.engagement_cap)
    return RulesScore(
        fit=fit,
        engagement=engagement,
        value=fit + engagement,
        grade=grade_of(model, fit, engagement),
        contributions=(*fit_contributions, *engagement_contributions),
    )


def _clamp(value: int, cap: int) -> int:
    return max(0, min(cap, value))


def grade_of(model: ScoringModelDefinition, fit: int, engagement: int) -> str:
    """Fit letter A-D times engagement digit 1-4, e.g. 'B2'."""
    letter = next((band for band in ("A", "B", "C") if fit >= model.fit_grades[band]), "D")
    digit = next((band for band in ("1", "2", "3") if engagement >= model.engagement_grades[band]), "4")
    return letter + digit


def _fit_contribution(rule: FitRule, lead: Mapping[str, Any]) -> ScoreContribution | None:
    value = field_value(lead, rule.field)
    if not holds(rule.op, rule.value, rule.min, rule.max, value):
        return None
    shown = value if not isinstance(value, list | tuple) else ", ".join(map(str, value))
    reason = rule.reason or f"{rule.field} {rule.op} {rule.value if rule.op != 'range' else (rule.min, rule.max)}"
    return ScoreContribution(rule=rule.id, points=rule.points, reason=f"{reason} ({shown})", kind="fit")


def _engagement(model: ScoringModelDefinition, touches: list[Touch], now: datetime) -> list[ScoreContribution]:
    contributions = []
    for rule in model.engagement_rules:
        matching = [touch for touch in touches if touch.kind == rule.activity]
        if not matching:
            continue
        worth = sum(rule.points * decay(now - touch.at, model.half_life_days) for touch in matching)
        raw = rule.points * len(matching)
        if rule.max_points is not None:
            worth, raw = min(worth, rule.max_points), min(raw, rule.max_points)
        contributions.append(
            ScoreContribution(
                rule=rule.id,
                points=raw,
                decayed_points=round(worth, 2),
                kind="engagement",
                reason=f"{len(matching)} x {rule.activity}, worth {worth:.1f} of {raw} after decay",
            )
        )
    return contributions


def decay(age: Any, half_life_days: float) -> float:
    """How much of an action's worth remains after `age` (a timedelta): halves every half-life."""
    days = max(0.0, age.total_seconds() / 86400)
    return math.pow(0.5, days / half_life_days)
