"""The learned model: tokens of whatever a lead carries, online logistic regression, explanations and the blend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.scoring.learning import Weights, blend, explain, features, label_of, learn, probability
from services.scoring.rules import Touch

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _plan(plan: str) -> dict[str, float]:
    return features({"attributes": {"plan": plan}}, [])


def _trained_on_plans(outcomes: int = 200) -> Weights:
    model = Weights()
    for index in range(outcomes):
        won = index % 2 == 0
        learn(model, _plan("pro" if won else "free"), 1 if won else 0)
    return model


# --- features -----------------------------------------------------------------------------------------------------


def test_fields_and_attributes_become_lowercase_tokens() -> None:
    lead = {"country": "JP", "seniority": " VP ", "attributes": {"plan": "Pro", "source_detail": "G2 review"}}
    assert features(lead, []) == {
        "country=jp": 1.0,
        "seniority=vp": 1.0,
        "attributes.plan=pro": 1.0,
        "attributes.source_detail=g2 review": 1.0,
    }


def test_identity_and_bookkeeping_fields_are_not_learned() -> None:
    lead = {
        "lead_id": "lead-1",
        "email": "ada@acme.test",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "phone": "+44 20 7946 0000",
        "company": "Acme",
        "company_domain": "acme.test",
        "captured_at": "2024-05-01T00:00:00Z",
        "consent_at": "2024-05-01T00:00:00Z",
        "referrer": "https://example.test",
        "industry": "retail",
    }
    assert features(lead, []) == {"industry=retail": 1.0}


def test_missing_and_empty_values_add_nothing() -> None:
    assert features({"country": None, "industry": "", "interests": [], "attributes": {"plan": ""}}, []) == {}


@pytest.mark.parametrize(
    ("visits", "token"),
    [
        ("0", "attributes.visits~0"),
        ("1", "attributes.visits~1"),
        ("2", "attributes.visits~1"),
        ("3", "attributes.visits~2"),
        ("4", "attributes.visits~2"),
        ("7", "attributes.visits~3"),
        (" 300 ", "attributes.visits~8"),
        ("2.5", "attributes.visits~1"),
        ("-3", "attributes.visits~-2"),
        ("inf", "attributes.visits=inf"),
        ("twelve", "attributes.visits=twelve"),
    ],
)
def test_numbers_fall_into_log_spaced_buckets(visits: str, token: str) -> None:
    assert features({"attributes": {"visits": visits}}, []) == {token: 1.0}


def test_lists_give_one_token_per_item_and_booleans_a_word() -> None:
    lead = {"interests": ["CRM", "erp "], "consent_marketing": False}
    assert features(lead, []) == {"interests=crm": 1.0, "interests=erp": 1.0, "consent_marketing=false": 1.0}


def test_behaviour_counts_only_touches_before_the_outcome() -> None:
    touches = [
        Touch("page_view", NOW - timedelta(days=2)),
        Touch("page_view", NOW - timedelta(days=1)),
        Touch("demo_request", NOW - timedelta(hours=1)),
        Touch("demo_request", NOW),
        Touch("webinar_attended", NOW + timedelta(days=1)),
    ]
    before = features({}, touches, before=NOW)
    assert before == pytest.approx({"did:page_view": 1.0986, "did:demo_request": 0.6931}, abs=1e-4)
    assert set(features({}, touches)) == {"did:page_view", "did:demo_request", "did:webinar_attended"}


def test_long_tokens_are_cut_to_fit_the_store() -> None:
    [token] = features({"attributes": {"note": "x" * 500}}, [])
    assert len(token) == 200


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("won", 1),
        ("qualified", 1),
        ("lost", 0),
        ("disqualified", 0),
        ("accepted", None),
        ("contacted", None),
        ("meeting_booked", None),
        ("recycled", None),
    ],
)
def test_outcomes_map_to_labels(kind: str, label: int | None) -> None:
    assert label_of(kind) == label


# --- learning -----------------------------------------------------------------------------------------------------


def test_an_untrained_model_knows_nothing() -> None:
    assert probability(Weights(), _plan("pro")) == 0.5


def test_learning_a_separable_stream_tells_winners_from_losers() -> None:
    model = _trained_on_plans()
    assert model.outcomes == 200
    assert probability(model, _plan("pro")) > 0.8
    assert probability(model, _plan("free")) < 0.2


def test_an_unseen_category_predicts_from_the_bias_alone() -> None:
    model = _trained_on_plans()
    assert "attributes.plan=enterprise" not in model.weights
    assert probability(model, _plan("enterprise")) == probability(model, {})
    assert 0.3 < probability(model, {}) < 0.7


def test_one_step_moves_the_probability_toward_the_label_and_reports_its_tokens() -> None:
    model = Weights()
    x = {"attributes.plan=pro": 1.0, "country=jp": 1.0}
    assert learn(model, x, 1) == set(x)
    assert model.outcomes == 1
    assert probability(model, x) > 0.5
    assert set(model.weights) == set(model.accumulated) == set(x)
    learn(model, {"country=de": 1.0}, 0)
    assert probability(model, {"country=de": 1.0}) < 0.5


def test_explain_names_the_most_influential_token_first() -> None:
    model = Weights(weights={"a=1": 0.2, "b=1": -1.5, "c=1": 0.9, "d=1": 0.0, "e=1": 0.1})
    x = {"a=1": 1.0, "b=1": 1.0, "c=1": 1.0, "d=1": 1.0, "e=1": 1.0, "unseen=1": 1.0}
    assert explain(model, x) == [("b=1", -1.5), ("c=1", 0.9), ("a=1", 0.2)]
    assert explain(model, x, top=10) == [("b=1", -1.5), ("c=1", 0.9), ("a=1", 0.2), ("e=1", 0.1)]


def test_explain_weighs_a_token_by_its_value() -> None:
    model = Weights(weights={"did:page_view": 0.5, "country=jp": 1.0})
    assert explain(model, {"did:page_view": 3.0, "country=jp": 1.0})[0] == ("did:page_view", 1.5)


def test_explaining_a_trained_model_points_at_the_plan() -> None:
    model = _trained_on_plans()
    [(token, push)] = explain(model, _plan("free"), top=1)
    assert token == "attributes.plan=free"
    assert push < 0


# --- blend --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("learned", "outcomes"), [(None, 0), (None, 10), (0.9, 0)])
def test_without_outcomes_the_rules_decide(learned: float | None, outcomes: int) -> None:
    assert blend(40, learned, weight=0.5, outcomes=outcomes) == 40


def test_the_model_gains_say_as_outcomes_grow() -> None:
    blended = [blend(40, 0.9, weight=0.5, outcomes=outcomes) for outcomes in (0, 10, 20, 50, 500)]
    assert blended == [40, 45, 50, 65, 65]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"rules_score": 150, "learned": 1.0, "weight": 0.5, "outcomes": 100}, 100),
        ({"rules_score": -60, "learned": 0.0, "weight": 0.5, "outcomes": 100}, 0),
        ({"rules_score": 10, "learned": 1.0, "weight": 1.0, "outcomes": 100}, 100),
        ({"rules_score": 10, "learned": 1.0, "weight": 0.0, "outcomes": 100}, 10),
    ],
)
def test_the_blend_stays_on_the_0_to_100_scale(kwargs: dict[str, Any], expected: int) -> None:
    assert blend(**kwargs) == expected
