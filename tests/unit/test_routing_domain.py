"""Routing decisions as pure functions: eligibility, weighted fairness, accounts first, rules, explanations."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.routing.domain import decide, pick_weighted
from services.routing.reps import Absence, Load, Rep, Requirements, Shift, WorkingHours, parse_week, why_ineligible
from services.routing.rules import DEFAULT_POLICY, RoutingPolicy, RoutingRule, pool_problems

# A Monday, 10:00 in Tokyo (01:00 UTC).
MONDAY_10_TOKYO = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
TOKYO_OFFICE = WorkingHours("Asia/Tokyo", parse_week({day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed")}))

AIKO = Rep("rep-a", "Aiko", team="apac", territories=frozenset({"JP"}), languages=frozenset({"ja"}))
BEN = Rep("rep-b", "Ben", team="emea", territories=frozenset({"DE", "FR"}), skills=frozenset({"vs:salesforce"}))
CHIDI = Rep("rep-c", "Chidi", team="emea", territories=frozenset({"*"}))


def _policy(*rules: dict[str, Any], **extra: Any) -> RoutingPolicy:
    return RoutingPolicy.model_validate({"rules": list(rules), **extra})


def _lead(**fields: Any) -> dict[str, Any]:
    return {"lead_id": "lead-1", "score": 70, "grade": "A2", "fit_grade": "A", "verdict": "qualified", **fields}


# --- eligibility ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rep", "load", "needs", "reason"),
    [
        (Rep("r", "R", active=False), Load(), Requirements(), "inactive"),
        (Rep("r", "R", max_open=3), Load(open_leads=3), Requirements(), "at capacity: 3 open of 3"),
        (Rep("r", "R", max_per_day=2), Load(day=MONDAY_10_TOKYO.date(), new_on_day=2), Requirements(),
         "daily cap reached: 2 of 2 new leads today"),
        (Rep("r", "R", skills=frozenset({"a"})), Load(), Requirements(skills=frozenset({"a", "b"})),
         "lacks skill(s) b"),
        (Rep("r", "R", languages=frozenset({"en"})), Load(), Requirements(languages=frozenset({"ja"})),
         "speaks none of ja"),
        (Rep("r", "R", territories=frozenset({"US"})), Load(), Requirements(territory="JP-13"),
         "does not cover territory JP-13"),
        (Rep("r", "R"), Load(), Requirements(exclude=frozenset({"r"})),
         "already had this lead (missed its SLA or rejected it)"),
    ],
)  # fmt: skip
def test_a_rep_who_cannot_take_the_lead_is_told_why(rep: Rep, load: Load, needs: Requirements, reason: str) -> None:
    assert why_ineligible(rep, load, MONDAY_10_TOKYO, needs) == reason


def test_yesterdays_new_leads_do_not_count_against_todays_cap() -> None:
    rep = Rep("r", "R", max_per_day=2)
    assert (
        why_ineligible(rep, Load(day=MONDAY_10_TOKYO.date() - timedelta(days=1), new_on_day=9), MONDAY_10_TOKYO) is None
    )


def test_working_hours_are_read_in_the_reps_own_timezone() -> None:
    rep = Rep("r", "R", timezone="Asia/Tokyo", hours=TOKYO_OFFICE)
    assert why_ineligible(rep, Load(), MONDAY_10_TOKYO) is None
    evening = MONDAY_10_TOKYO + timedelta(hours=9)  # 19:00 in Tokyo
    assert why_ineligible(rep, Load(), evening) == "outside working hours (Asia/Tokyo)"
    thursday = MONDAY_10_TOKYO + timedelta(days=3)
    assert why_ineligible(rep, Load(), thursday) == "outside working hours (Asia/Tokyo)"


def test_out_of_office_ends_when_it_says() -> None:
    back = MONDAY_10_TOKYO + timedelta(hours=2)
    rep = Rep("r", "R", absences=(Absence(MONDAY_10_TOKYO - timedelta(days=1), back),))
    assert why_ineligible(rep, Load(), MONDAY_10_TOKYO) == f"out of office until {back.isoformat()}"
    assert why_ineligible(rep, Load(), back) is None


def test_a_night_shift_ending_at_midnight_covers_the_late_evening() -> None:
    shift = Shift(time(18), time(0))
    assert shift.covers(time(23, 59)) and not shift.covers(time(9))


def test_territory_of_a_country_covers_its_regions() -> None:
    assert why_ineligible(AIKO, Load(), MONDAY_10_TOKYO, Requirements(territory="JP-13")) is None


# --- weighted round robin -------------------------------------------------------------------------------------


def _share(reps: list[Rep], picks: int) -> Counter[str]:
    rotation: dict[str, int] = {}
    won: Counter[str] = Counter()
    for _ in range(picks):
        chosen, rotation = pick_weighted(reps, rotation)
        won[chosen.rep_id] += 1
    return won


def test_over_ten_thousand_assignments_each_share_is_within_two_percent_of_its_weight() -> None:
    reps = [Rep("rep-a", "A", weight=1), Rep("rep-b", "B", weight=2), Rep("rep-c", "C", weight=3),
            Rep("rep-d", "D", weight=4)]  # fmt: skip
    won = _share(reps, 10_000)
    total_weight = sum(rep.weight for rep in reps)
    spread = max(abs(won[rep.rep_id] / 10_000 - rep.weight / total_weight) for rep in reps)
    assert spread < 0.02, (won, spread)


def test_fairness_with_reps_coming_and_going_stays_within_two_percent() -> None:
    """10,000 leads while a random rep is unavailable now and then: shares still follow the weights."""
    chance = random.Random(7)
    reps = [Rep(f"rep-{n}", f"R{n}", weight=weight) for n, weight in enumerate((1, 1, 2, 3))]
    rotation: dict[str, int] = {}
    won: Counter[str] = Counter()
    for _ in range(10_000):
        away = chance.choice(reps) if chance.random() < 0.1 else None
        chosen, rotation = pick_weighted([rep for rep in reps if rep is not away], rotation)
        won[chosen.rep_id] += 1
    total_weight = sum(rep.weight for rep in reps)
    assert max(abs(won[rep.rep_id] / 10_000 - rep.weight / total_weight) for rep in reps) < 0.02, won


def test_the_order_reps_were_added_changes_nothing() -> None:
    reps = [Rep("rep-a", "A", weight=2), Rep("rep-b", "B"), Rep("rep-c", "C", weight=3)]
    sequences = []
    for order in (reps, list(reversed(reps)), [reps[1], reps[2], reps[0]]):
        rotation: dict[str, int] = {}
        picks = []
        for _ in range(12):
            chosen, rotation = pick_weighted(sorted(order, key=lambda rep: rep.rep_id), rotation)
            picks.append(chosen.rep_id)
        sequences.append(picks)
    assert sequences[0] == sequences[1] == sequences[2]
    assert Counter(sequences[0]) == {"rep-a": 4, "rep-b": 2, "rep-c": 6}


def test_weighted_round_robin_spreads_turns_instead_of_bunching_them() -> None:
    won = []
    rotation: dict[str, int] = {}
    for _ in range(6):
        chosen, rotation = pick_weighted([Rep("rep-a", "A", weight=2), Rep("rep-b", "B")], rotation)
        won.append(chosen.rep_id)
    assert won == ["rep-a", "rep-b", "rep-a"] * 2


# --- decisions ----------------------------------------------------------------------------------------------------


def test_the_account_owner_gets_the_lead_first() -> None:
    decision = decide(_lead(company_domain="acme.co.jp"), policy=DEFAULT_POLICY, reps=[AIKO, BEN, CHIDI], loads={},
                      account_owner="rep-b", rotations={}, now=MONDAY_10_TOKYO)  # fmt: skip
    assert (decision.kind, decision.rep, decision.via) == ("assigned", BEN, "account")
    assert decision.reason == "Ben owns the account acme.co.jp"


def test_an_unavailable_account_owner_falls_back_to_the_rules_and_says_so() -> None:
    full = {"rep-b": Load(open_leads=5)}
    ben = Rep("rep-b", "Ben", team="emea", max_open=5)
    decision = decide(_lead(company_domain="acme.de"), policy=DEFAULT_POLICY, reps=[AIKO, ben, CHIDI], loads=full,
                      account_owner="rep-b", rotations={}, now=MONDAY_10_TOKYO)  # fmt: skip
    assert decision.via == "rule" and decision.rep == AIKO
    assert decision.candidates[0].as_dict() == {
        "rep_id": "rep-b", "name": "Ben", "verdict": "skipped",
        "reason": "owns the account acme.de but is at capacity: 5 open of 5",
    }  # fmt: skip
    assert decision.reason.endswith("account owner unavailable")


def test_the_first_matching_rule_picks_the_pool_and_every_candidate_is_explained() -> None:
    policy = _policy(
        {"id": "japan", "when": [{"field": "country", "op": "equals", "value": "JP"}], "team": "apac"},
        {"id": "vs-salesforce", "when": [{"field": "current_solution", "op": "contains", "value": "salesforce"}],
         "team": "emea", "require_skills": ["vs:salesforce"]},
        {"id": "rest", "team": "emea"},
    )  # fmt: skip
    lead = _lead(country="DE", current_solution="Salesforce Sales Cloud")
    decision = decide(lead, policy=policy, reps=[AIKO, BEN, CHIDI], loads={}, account_owner=None, rotations={},
                      now=MONDAY_10_TOKYO)  # fmt: skip
    assert (decision.rule, decision.pool, decision.rep) == ("vs-salesforce", "emea", BEN)
    assert [(c.rep_id, c.verdict, c.reason) for c in decision.candidates] == [
        ("rep-b", "chosen", "weight 1, next in weighted round robin"),
        ("rep-c", "skipped", "lacks skill(s) vs:salesforce"),
    ]
    assert "rule vs-salesforce (current_solution contains salesforce)" in decision.reason


def test_rules_can_match_score_grade_and_verdict() -> None:
    policy = _policy(
        {"id": "hot", "when": [{"field": "fit_grade", "op": "equals", "value": "A"},
                               {"field": "score", "op": "range", "min": 60}], "rep_id": "rep-a"},
        {"id": "nurture", "when": [{"field": "verdict", "op": "equals", "value": "nurture"}], "team": "emea"},
        {"id": "rest", "team": "emea"},
    )  # fmt: skip
    hot = decide(_lead(), policy=policy, reps=[AIKO, BEN, CHIDI], loads={}, account_owner=None, rotations={},
                 now=MONDAY_10_TOKYO)  # fmt: skip
    assert (hot.rule, hot.rep) == ("hot", AIKO)
    cold = decide(_lead(score=20, grade="C4", fit_grade="C", verdict="nurture"), policy=policy, reps=[AIKO, BEN],
                  loads={}, account_owner=None, rotations={}, now=MONDAY_10_TOKYO)  # fmt: skip
    assert (cold.rule, cold.rep) == ("nurture", BEN)


def test_nobody_eligible_leaves_the_lead_in_the_pools_queue_with_every_reason() -> None:
    away = Rep("rep-a", "Aiko", team="apac", active=False)
    decision = decide(_lead(), policy=_policy({"id": "apac", "team": "apac"}), reps=[away, BEN], loads={},
                      account_owner=None, rotations={}, now=MONDAY_10_TOKYO)  # fmt: skip
    assert (decision.kind, decision.rep, decision.pool) == ("unassigned", None, "apac")
    assert [(c.rep_id, c.reason) for c in decision.candidates] == [("rep-a", "inactive")]
    assert "waits in its queue" in decision.reason


def test_territory_matching_sends_the_lead_to_a_rep_covering_its_country() -> None:
    policy = _policy({"id": "by-territory", "match_territory": True})
    decision = decide(_lead(country="FR"), policy=policy, reps=[AIKO, BEN], loads={}, account_owner=None,
                      rotations={}, now=MONDAY_10_TOKYO)  # fmt: skip
    assert decision.rep == BEN


# --- policies as data -----------------------------------------------------------------------------------------


def _errors(definition: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate(definition)
    return [(".".join(map(str, error["loc"])), error["msg"]) for error in caught.value.errors()]


def test_an_unknown_field_is_named_with_its_path() -> None:
    [(path, message)] = _errors({"rules": [{"id": "x", "when": [{"field": "shoe_size", "op": "exists"}]}]})
    assert path == "rules.0.when.0" and "unknown field 'shoe_size'" in message


def test_a_rule_after_a_catch_all_is_unreachable() -> None:
    [(path, message)] = _errors({"rules": [{"id": "all"}, {"id": "jp", "when": [
        {"field": "country", "op": "equals", "value": "JP"}]}]})  # fmt: skip
    assert path == "rules" and "rule 'jp' is unreachable: rule 'all' before it" in message


def test_a_rule_narrower_than_an_earlier_one_is_unreachable() -> None:
    japan = {"field": "country", "op": "equals", "value": "JP"}
    big = {"field": "company_size", "op": "equals", "value": "1001-5000"}
    [(_, message)] = _errors({"rules": [{"id": "jp", "when": [japan]}, {"id": "jp-big", "when": [japan, big]}]})
    assert "'jp-big' is unreachable" in message


def test_sla_keys_must_be_grades() -> None:
    [(path, message)] = _errors({"rules": [{"id": "all"}], "sla_minutes": {"default": 60, "Z9": 5}})
    assert path == "sla_minutes" and "'Z9'" in message


def test_sla_follows_the_most_specific_grade() -> None:
    policy = _policy({"id": "all"}, sla_minutes={"A1": 2, "A": 5, "default": 60})
    assert (policy.sla_for("A1"), policy.sla_for("A3"), policy.sla_for(None)) == (
        timedelta(minutes=2), timedelta(minutes=5), timedelta(minutes=60))  # fmt: skip


def test_rules_sending_leads_to_empty_or_unknown_pools_are_reported() -> None:
    policy = _policy({"id": "apac", "when": [{"field": "country", "op": "equals", "value": "JP"}], "team": "apac"},
                     {"id": "ghost", "when": [{"field": "country", "op": "equals", "value": "US"}], "team": "ghosts"},
                     {"id": "vip", "when": [{"field": "score", "op": "range", "min": 90}], "rep_id": "rep-z"},
                     {"id": "rest"})  # fmt: skip
    problems = pool_problems(policy, teams={"apac": 0}, reps={"rep-a": True})
    assert problems == [
        {"field": "rules.0.team", "message": "empty pool: team 'apac' has no active rep"},
        {"field": "rules.1.team", "message": "unknown team 'ghosts'"},
        {"field": "rules.2.rep_id", "message": "unknown rep 'rep-z'"},
    ]


def test_a_rule_goes_to_a_team_or_a_rep_not_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        RoutingRule(id="x", team="apac", rep_id="rep-a")
