"""Scoring models marketers own: validated whole with the path of each error, then evaluated purely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.scoring.rules import (
    RESUBMISSION,
    STARTER_MODEL,
    EngagementRule,
    FitRule,
    ScoringModelDefinition,
    Touch,
    grade_of,
    score_with_rules,
)

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)


def _rule(**overrides: Any) -> dict[str, Any]:
    return {"id": "rule-1", "field": "country", "op": "equals", "value": "jp", "points": 10, **overrides}


def _errors(definition: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        ScoringModelDefinition.model_validate(definition)
    return [(tuple(error["loc"]), error["msg"]) for error in caught.value.errors()]


def _one_fit_rule(**rule: Any) -> ScoringModelDefinition:
    return ScoringModelDefinition(fit_rules=[FitRule.model_validate(_rule(**rule))])


def _engagement_only(*rules: EngagementRule, half_life_days: float = 30.0) -> ScoringModelDefinition:
    return ScoringModelDefinition(engagement_rules=list(rules), half_life_days=half_life_days)


def _visits(count: str) -> dict[str, Any]:
    return {"attributes": {"visits": count}}


# --- validation -------------------------------------------------------------------------------------------------


def test_starter_model_is_valid_and_survives_a_json_round_trip() -> None:
    assert ScoringModelDefinition.model_validate(STARTER_MODEL.model_dump(mode="json")) == STARTER_MODEL


@pytest.mark.parametrize(
    ("definition", "loc", "message"),
    [
        ({"fit_rules": [_rule(weight=3)]}, ("fit_rules", 0, "weight"), "Extra inputs are not permitted"),
        ({"fit_rules": [_rule(), _rule(id="r2", points="ten")]}, ("fit_rules", 1, "points"), "valid integer"),
        ({"fit_rules": [_rule(points=101)]}, ("fit_rules", 0, "points"), "less than or equal to 100"),
        ({"fit_rules": [_rule(id="Has Spaces")]}, ("fit_rules", 0, "id"), "should match pattern"),
        ({"fit_rules": [_rule(op="like")]}, ("fit_rules", 0, "op"), "Input should be"),
        ({"fit_rules": [_rule(field="email")]}, ("fit_rules", 0), "unknown field 'email'"),
        ({"fit_rules": [_rule(field="attributes.")]}, ("fit_rules", 0), "unknown field"),
        ({"fit_rules": [_rule(op="range", value=None)]}, ("fit_rules", 0), "range needs min and/or max"),
        ({"fit_rules": [_rule(op="range", value=None, min=10, max=10)]}, ("fit_rules", 0), "must be below max"),
        ({"fit_rules": [_rule(op="range", value=None, min=20, max=10)]}, ("fit_rules", 0), "must be below max"),
        ({"fit_rules": [_rule(op="range", min=1)]}, ("fit_rules", 0), "range takes min/max, not value"),
        ({"fit_rules": [_rule(op="in", value="jp")]}, ("fit_rules", 0), "in needs a non-empty list"),
        ({"fit_rules": [_rule(op="in", value=[])]}, ("fit_rules", 0), "in needs a non-empty list"),
        ({"fit_rules": [_rule(op="exists", value="jp")]}, ("fit_rules", 0), "exists takes no value"),
        ({"fit_rules": [_rule(op="equals", value=["jp", "de"])]}, ("fit_rules", 0), "equals needs a single value"),
        ({"fit_rules": [_rule(op="contains", value=None)]}, ("fit_rules", 0), "contains needs a single value"),
        ({"fit_rules": [_rule(max=5)]}, ("fit_rules", 0), "equals takes value, not min/max"),
        (
            {"engagement_rules": [{"id": "demo", "activity": "Demo Request", "points": 30}]},
            ("engagement_rules", 0, "activity"),
            "should match pattern",
        ),
        (
            {"engagement_rules": [{"id": "demo", "activity": "demo_request", "points": 30, "max_points": 0}]},
            ("engagement_rules", 0, "max_points"),
            "greater than or equal to 1",
        ),
        ({"decay": 7}, ("decay",), "Extra inputs are not permitted"),
        ({"half_life_days": 0}, ("half_life_days",), "greater than 0"),
    ],
)
def test_invalid_definitions_are_rejected_at_the_culprit(
    definition: dict[str, Any], loc: tuple[int | str, ...], message: str
) -> None:
    [(found_loc, found_message)] = _errors(definition)
    assert found_loc == loc
    assert message in found_message


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"fit_grades": {"A": 30, "B": 30, "C": 10}}, "thresholds overlap"),
        ({"fit_grades": {"A": 20, "B": 30, "C": 10}}, "thresholds overlap"),
        ({"engagement_grades": {"1": 30, "2": 10, "3": 20}}, "thresholds overlap"),
        ({"fit_grades": {"A": 61, "B": 30, "C": 10}}, "band A at 61 can never be reached under the cap 60"),
        ({"engagement_grades": {"1": 41, "2": 20, "3": 10}}, "band 1 at 41 can never be reached under the cap 40"),
        ({"fit_grades": {"A": 45, "B": 30}}, "give exactly the bands ['A', 'B', 'C']"),
        ({"fit_cap": 70}, "fit_cap + engagement_cap must be 100"),
        ({"fit_cap": 50, "engagement_cap": 40}, "not 90"),
        ({"fit_rules": [_rule(), _rule(points=5)]}, "duplicate rule ids ['rule-1']"),
        (
            {
                "engagement_rules": [
                    {"id": "x", "activity": "a", "points": 1},
                    {"id": "x", "activity": "b", "points": 1},
                ]
            },
            "duplicate rule ids ['x']",
        ),
    ],
)
def test_incoherent_models_are_rejected_naming_the_culprit(definition: dict[str, Any], message: str) -> None:
    [(_, found_message)] = _errors(definition)
    assert message in found_message


def test_a_fit_cap_matched_by_the_engagement_cap_is_accepted() -> None:
    model = ScoringModelDefinition(
        fit_cap=80,
        engagement_cap=20,
        fit_grades={"A": 80, "B": 50, "C": 1},
        engagement_grades={"1": 20, "2": 2, "3": 1},
    )
    assert (model.fit_cap, model.engagement_cap) == (80, 20)


@pytest.mark.parametrize(
    ("definition", "loc"),
    [
        ({"fit_grades": {"A": 30, "B": 30, "C": 10}}, ("fit_grades",)),
        ({"fit_rules": [_rule(), _rule(points=5)]}, ("fit_rules",)),
    ],
)
def test_grade_overlaps_and_duplicate_ids_are_located(definition: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    [(found_loc, _)] = _errors(definition)
    assert found_loc == loc


# --- fit rules ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "lead", "matches"),
    [
        ({"op": "equals", "value": "JP"}, {"country": "jp"}, True),
        ({"op": "equals", "value": "jp"}, {"country": " Jp "}, True),
        ({"op": "equals", "value": "jp"}, {"country": "de"}, False),
        ({"op": "equals", "value": "jp"}, {"country": None}, False),
        ({"op": "equals", "value": "jp"}, {}, False),
        ({"op": "in", "value": ["de", "jp"]}, {"country": "JP"}, True),
        ({"op": "in", "value": ["de", "jp"]}, {"country": "fr"}, False),
        ({"field": "industry", "op": "contains", "value": "Tech"}, {"industry": "fintech"}, True),
        ({"field": "industry", "op": "contains", "value": "tech"}, {"industry": "retail"}, False),
        ({"field": "interests", "op": "contains", "value": "crm"}, {"interests": ["ERP", "CRM suite"]}, True),
        ({"field": "interests", "op": "contains", "value": "crm"}, {"interests": ["erp"]}, False),
        ({"field": "interests", "op": "equals", "value": "erp"}, {"interests": ("crm", "ERP")}, True),
        ({"field": "interests", "op": "exists", "value": None}, {"interests": []}, False),
        ({"field": "interests", "op": "exists", "value": None}, {"interests": ["crm"]}, True),
        ({"op": "exists", "value": None}, {"country": "jp"}, True),
        ({"op": "exists", "value": None}, {"country": ""}, False),
        ({"op": "exists", "value": None}, {"country": None}, False),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10, "max": 20}, _visits("12"), True),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10, "max": 20}, _visits("10"), True),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10, "max": 20}, _visits("20"), False),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10, "max": 20}, _visits("9.5"), False),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10}, _visits("1e6"), True),
        ({"field": "attributes.visits", "op": "range", "value": None, "max": 10}, _visits("-3"), True),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10}, _visits("many"), False),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10}, {"attributes": {}}, False),
        ({"field": "attributes.visits", "op": "range", "value": None, "min": 10}, {}, False),
        ({"field": "attributes.newsletter", "op": "equals", "value": True}, {"attributes": {"newsletter": "on"}}, True),
        (
            {"field": "attributes.newsletter", "op": "equals", "value": True},
            {"attributes": {"newsletter": "TRUE"}},
            True,
        ),
        (
            {"field": "attributes.newsletter", "op": "equals", "value": True},
            {"attributes": {"newsletter": "off"}},
            False,
        ),
        ({"field": "consent_marketing", "op": "equals", "value": True}, {"consent_marketing": True}, True),
        ({"field": "consent_marketing", "op": "equals", "value": True}, {"consent_marketing": False}, False),
        ({"field": "consent_marketing", "op": "equals", "value": False}, {"consent_marketing": False}, True),
        ({"field": "consent_marketing", "op": "equals", "value": True}, {"consent_marketing": None}, False),
        ({"field": "attributes.plan", "op": "in", "value": ["pro", "team"]}, {"attributes": {"plan": "Team"}}, True),
    ],
)
def test_each_operator_matches_or_not(rule: dict[str, Any], lead: dict[str, Any], matches: bool) -> None:
    scored = score_with_rules(_one_fit_rule(**rule), lead, [], now=NOW)
    assert [c.rule for c in scored.contributions] == (["rule-1"] if matches else [])
    assert scored.fit == (10 if matches else 0)


def test_a_matching_fit_rule_explains_itself_with_the_value_it_saw() -> None:
    model = _one_fit_rule(op="in", value=["jp", "de"], reason="priority market")
    [contribution] = score_with_rules(model, {"country": "JP"}, [], now=NOW).contributions
    assert (contribution.rule, contribution.points, contribution.kind) == ("rule-1", 10, "fit")
    assert contribution.reason == "priority market (JP)"
    assert contribution.decayed_points is None


def test_fit_is_capped_at_fit_cap_and_never_negative() -> None:
    generous = ScoringModelDefinition(
        fit_rules=[
            FitRule(id="jp", field="country", op="equals", value="jp", points=40),
            FitRule(id="retail", field="industry", op="exists", points=40),
        ]
    )
    harsh = ScoringModelDefinition(fit_rules=[FitRule(id="jp", field="country", op="equals", value="jp", points=-30)])
    lead = {"country": "jp", "industry": "retail"}
    capped = score_with_rules(generous, lead, [], now=NOW)
    assert (capped.fit, capped.value, sum(c.points for c in capped.contributions)) == (60, 60, 80)
    floored = score_with_rules(harsh, lead, [], now=NOW)
    assert (floored.fit, floored.value, [c.points for c in floored.contributions]) == (0, 0, [-30])


def test_starter_model_gives_a_complete_business_lead_the_whole_fit_cap() -> None:
    lead = {
        "company_domain": "acme.test",
        "seniority": "vp",
        "company": "Acme",
        "company_size": "201-1000",
        "current_solution": "spreadsheets",
        "consent_marketing": True,
    }
    scored = score_with_rules(STARTER_MODEL, lead, [], now=NOW)
    assert [c.rule for c in scored.contributions] == [
        "business-email",
        "senior",
        "company-named",
        "mid-market",
        "uses-competitor",
        "consented",
    ]
    assert (scored.fit, scored.engagement, scored.value, scored.grade) == (60, 0, 60, "A4")


# --- engagement ---------------------------------------------------------------------------------------------------

DEMO = EngagementRule(id="demo", activity="demo_request", points=30)
PRICING = EngagementRule(id="pricing", activity="pricing_page_view", points=10, max_points=20)


def test_a_touch_aged_exactly_one_half_life_is_worth_half() -> None:
    model = _engagement_only(DEMO, half_life_days=30)
    scored = score_with_rules(model, {}, [Touch("demo_request", NOW - timedelta(days=30))], now=NOW)
    [contribution] = scored.contributions
    assert (contribution.rule, contribution.kind, contribution.points) == ("demo", "engagement", 30)
    assert contribution.decayed_points == 15.0
    assert scored.engagement == 15


def test_two_half_lives_leave_a_quarter_and_a_fresh_touch_is_worth_all() -> None:
    model = _engagement_only(DEMO, half_life_days=10)
    touches = [Touch("demo_request", NOW - timedelta(days=20)), Touch("demo_request", NOW)]
    [contribution] = score_with_rules(model, {}, touches, now=NOW).contributions
    assert (contribution.points, contribution.decayed_points) == (60, 37.5)


def test_a_touch_stamped_after_now_is_not_worth_more_than_its_points() -> None:
    scored = score_with_rules(_engagement_only(DEMO), {}, [Touch("demo_request", NOW + timedelta(days=9))], now=NOW)
    assert scored.contributions[0].decayed_points == 30.0


def test_max_points_caps_a_repeated_activity() -> None:
    touches = [Touch("pricing_page_view", NOW)] * 3
    [contribution] = score_with_rules(_engagement_only(PRICING), {}, touches, now=NOW).contributions
    assert (contribution.points, contribution.decayed_points) == (20, 20.0)
    assert contribution.reason.startswith("3 x pricing_page_view")


def test_engagement_is_capped_at_engagement_cap() -> None:
    touches = [Touch("demo_request", NOW), Touch("pricing_page_view", NOW), Touch("pricing_page_view", NOW)]
    scored = score_with_rules(_engagement_only(DEMO, PRICING), {}, touches, now=NOW)
    assert sum(c.decayed_points or 0 for c in scored.contributions) == 50
    assert (scored.engagement, scored.value) == (40, 40)


def test_activities_without_a_rule_add_nothing_and_resubmission_counts() -> None:
    touches = [Touch("newsletter_open", NOW), Touch(RESUBMISSION, NOW)]
    scored = score_with_rules(STARTER_MODEL, {}, touches, now=NOW)
    assert [(c.rule, c.decayed_points) for c in scored.contributions] == [("resubmitted", 10.0)]
    assert scored.engagement == 10


def test_contributions_list_fit_rules_then_engagement_rules() -> None:
    lead = {"seniority": "Manager"}
    scored = score_with_rules(STARTER_MODEL, lead, [Touch("webinar_attended", NOW)], now=NOW)
    assert [(c.rule, c.kind) for c in scored.contributions] == [("manager", "fit"), ("webinar", "engagement")]
    assert (scored.fit, scored.engagement, scored.value) == (10, 10, 20)


# --- grades -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fit", "engagement", "grade"),
    [
        (60, 40, "A1"),
        (45, 30, "A1"),
        (44, 29, "B2"),
        (30, 20, "B2"),
        (29, 19, "C3"),
        (15, 10, "C3"),
        (14, 9, "D4"),
        (0, 0, "D4"),
    ],
)
def test_grade_letters_and_digits_change_exactly_at_band_edges(fit: int, engagement: int, grade: str) -> None:
    assert grade_of(STARTER_MODEL, fit, engagement) == grade


def test_score_with_rules_grades_the_capped_parts() -> None:
    model = _one_fit_rule(op="exists", value=None, points=100)
    scored = score_with_rules(model, {"country": "jp"}, [], now=NOW)
    assert (scored.fit, scored.grade) == (60, "A4")
