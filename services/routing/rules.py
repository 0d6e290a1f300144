"""Routing policies as data sales ops own: ordered rules sending leads to a team's pool or a rep, and SLAs.

Validated on write (each error names its path); evaluation is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.conditions import Operator, Scalar, describe, field_value, holds, is_attribute, operand_problem
from shared.events import LeadCapturedV1, LeadScoredV1

RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,64}$")]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
# What a rule can look at: every lead field, its attributes, and scoring's verdict on it.
SCORE_FIELDS = frozenset({"score", "grade", "fit_grade", "verdict", "fit_score", "engagement_score", "went_cold"})
ROUTABLE_FIELDS = (frozenset(LeadCapturedV1.model_fields) - {"attributes"}) | SCORE_FIELDS
ALL_REPS = "all"


class Condition(BaseModel):
    """`field op value`: `field` is a lead field, `attributes.<name>`, or score/grade/fit_grade/verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Operator
    value: Scalar | list[Scalar] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Condition:
        if self.field not in ROUTABLE_FIELDS and not is_attribute(self.field):
            raise ValueError(f"unknown field {self.field!r}: use one of {sorted(ROUTABLE_FIELDS)} or attributes.<name>")
        problem = operand_problem(self.op, self.value, self.min, self.max)
        if problem:
            raise ValueError(problem)
        return self

    def holds_for(self, lead: Mapping[str, Any]) -> bool:
        """True if the lead satisfies the condition."""
        return holds(self.op, self.value, self.min, self.max, field_value(lead, self.field))

    def __str__(self) -> str:
        return describe(self.field, self.op, self.value, self.min, self.max)


class RoutingRule(BaseModel):
    """When every condition holds, the lead goes to `rep_id`, or to `team`'s pool (every rep when neither)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RuleId
    when: list[Condition] = Field(default_factory=list, max_length=50)
    team: Tag | None = None
    rep_id: Tag | None = None
    require_skills: list[Tag] = Field(default_factory=list, max_length=20)
    require_languages: list[Tag] = Field(default_factory=list, max_length=20)
    match_territory: bool = False
    match_segment: bool = False
    reason: Annotated[str, StringConstraints(max_length=200)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RoutingRule:
        if self.team is not None and self.rep_id is not None:
            raise ValueError("send the lead to a team or to a rep, not both")
        return self

    @property
    def pool(self) -> str:
        """The queue a lead waits in when nobody of this rule's target is eligible."""
        if self.rep_id is not None:
            return f"rep:{self.rep_id}"
        return self.team or ALL_REPS

    def matches(self, lead: Mapping[str, Any]) -> bool:
        """True if every condition holds (a rule without conditions matches everything)."""
        return all(condition.holds_for(lead) for condition in self.when)

    def explain(self) -> str:
        """Why a lead matched, in words."""
        if self.reason:
            return self.reason
        return " and ".join(str(condition) for condition in self.when) or "every lead"


def _signature(rule: RoutingRule) -> frozenset[str]:
    return frozenset(condition.model_dump_json() for condition in rule.when)


class RoutingPolicy(BaseModel):
    """A whole routing policy, applied whole or not at all: rules in order, SLAs by grade, escalation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[RoutingRule] = Field(min_length=1, max_length=500)
    # Minutes a rep has to accept, by grade ("A1"), fit letter ("A") or "default"; the most specific wins.
    sla_minutes: dict[str, float] = Field(
        default_factory=lambda: {"A": 5, "B": 60, "C": 240, "D": 1440, "default": 1440}, validate_default=True
    )
    escalate_after_misses: int = Field(3, ge=1, le=1000)

    @field_validator("rules")
    @classmethod
    def _reachable(cls, rules: list[RoutingRule]) -> list[RoutingRule]:
        ids = [rule.id for rule in rules]
        duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule ids {duplicates}")
        for position, rule in enumerate(rules):
            for earlier in rules[:position]:
                # An earlier rule whose conditions are a subset of this one's catches every lead first.
                if _signature(earlier) <= _signature(rule):
                    raise ValueError(
                        f"rule {rule.id!r} is unreachable: rule {earlier.id!r} before it matches every lead it would"
                    )
        return rules

    @field_validator("sla_minutes")
    @classmethod
    def _sla(cls, minutes: dict[str, float]) -> dict[str, float]:
        for key, value in minutes.items():
            if not (
                key == "default" or (key[:1] in "ABCD" and len(key) in (1, 2) and key[1:] in ("", "1", "2", "3", "4"))
            ):
                raise ValueError(f"SLA key {key!r}: use a grade like 'A1', a fit letter A-D, or 'default'")
            if not 0.1 <= value <= 60 * 24 * 30:
                raise ValueError(f"SLA for {key} must be 0.1 minute (6 s) to 30 days, not {value}")
        if "default" not in minutes:
            raise ValueError("give a 'default' SLA for leads without a grade")
        return minutes

    def first_match(self, lead: Mapping[str, Any]) -> RoutingRule | None:
        """The first rule whose conditions the lead meets."""
        return next((rule for rule in self.rules if rule.matches(lead)), None)

    def sla_for(self, grade: str | None) -> timedelta:
        """How long a rep has to accept a lead of `grade`."""
        for key in (grade, grade[:1] if grade else None, "default"):
            if key and key in self.sla_minutes:
                return timedelta(minutes=self.sla_minutes[key])
        return timedelta(days=1)


DEFAULT_POLICY = RoutingPolicy(rules=[RoutingRule(id="everyone", reason="default policy: every lead to every rep")])


def lead_view(scored: LeadScoredV1) -> dict[str, Any]:
    """What rules match on: the lead's fields plus scoring's verdict."""
    return {
        **scored.lead,
        "lead_id": scored.lead_id,
        "company_domain": scored.company_domain or scored.lead.get("company_domain"),
        "score": scored.score,
        "grade": scored.grade,
        "fit_grade": scored.grade[:1] if scored.grade else None,
        "verdict": scored.verdict,
        "fit_score": scored.fit_score,
        "engagement_score": scored.engagement_score,
        "went_cold": scored.went_cold,
    }


def pool_problems(policy: RoutingPolicy, *, teams: Mapping[str, int], reps: Mapping[str, bool]) -> list[dict[str, str]]:
    """Rules that send leads nowhere: an unknown team or rep, or a team without an active rep.

    `teams`: team id → active reps in it; `reps`: rep id → active.
    """
    errors = []
    for position, rule in enumerate(policy.rules):
        if rule.team is not None:
            if rule.team not in teams:
                errors.append({"field": f"rules.{position}.team", "message": f"unknown team {rule.team!r}"})
            elif teams[rule.team] == 0:
                errors.append(
                    {"field": f"rules.{position}.team", "message": f"empty pool: team {rule.team!r} has no active rep"}
                )
        if rule.rep_id is not None:
            if rule.rep_id not in reps:
                errors.append({"field": f"rules.{position}.rep_id", "message": f"unknown rep {rule.rep_id!r}"})
            elif not reps[rule.rep_id]:
                errors.append(
                    {"field": f"rules.{position}.rep_id", "message": f"empty pool: rep {rule.rep_id!r} is inactive"}
                )
        if rule.team is None and rule.rep_id is None and not any(reps.values()):
            errors.append({"field": f"rules.{position}", "message": "empty pool: there is no active rep"})
    return errors
