"""The model learned from sales outcomes: online logistic regression over whatever a lead carries.

Features are tokens made from any lead field or attribute (`country=jp`, `attributes.plan=pro`,
`attributes.visits~8`), so unseen categories simply have no weight yet and missing values add nothing.
Behaviour counts only what happened before the outcome, so nothing known only afterwards leaks in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.scoring.rules import Touch

# Identity and bookkeeping: unique per lead, so they could only memorise, never generalise.
NOT_LEARNED = frozenset({
    "lead_id", "email", "first_name", "last_name", "phone", "captured_at", "consent_at", "merged_at",
    "company", "company_domain", "changed_fields", "renewed_interest", "referrer", "landing_page",
    "consent_wording_version",
})  # fmt: skip
MAX_TOKEN = 200
LEARNING_RATE = 0.3
L2 = 1e-4
POSITIVE = frozenset({"won", "qualified"})
NEGATIVE = frozenset({"lost", "disqualified"})


def label_of(outcome_kind: str) -> int | None:
    """1 for won/qualified, 0 for lost/disqualified, None for outcomes that say nothing of quality."""
    return 1 if outcome_kind in POSITIVE else 0 if outcome_kind in NEGATIVE else None


def features(lead: Mapping[str, Any], touches: Iterable[Touch], *, before: datetime | None = None) -> dict[str, float]:
    """Tokens of a lead and its behaviour up to `before` (all of it when None), each with its value."""
    found: dict[str, float] = {}
    for name, value in lead.items():
        if name in NOT_LEARNED or name == "attributes":
            continue
        found.update(_tokens(name, value))
    for name, value in (lead.get("attributes") or {}).items():
        found.update(_tokens(f"attributes.{name}", value))
    counts = Counter(touch.kind for touch in touches if before is None or touch.at < before)
    found.update({f"did:{kind}"[:MAX_TOKEN]: math.log1p(count) for kind, count in counts.items()})
    return found


def _tokens(name: str, value: Any) -> dict[str, float]:
    if value is None or value == "" or value == [] or value == ():
        return {}
    if isinstance(value, list | tuple):
        return {f"{name}={str(item).strip().lower()}"[:MAX_TOKEN]: 1.0 for item in value}
    if isinstance(value, bool):
        return {f"{name}={str(value).lower()}": 1.0}
    number = _number(value)
    if number is not None:
        # Log-spaced buckets: 3 and 4 visits look alike, 3 and 300 do not; no scale needs to be known.
        bucket = int(math.copysign(math.floor(math.log2(1 + abs(number))), number))
        return {f"{name}~{bucket}"[:MAX_TOKEN]: 1.0}
    return {f"{name}={str(value).strip().lower()}"[:MAX_TOKEN]: 1.0}


def _number(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class Weights:
    """The part of the model a lead touches: its tokens' weights and AdaGrad accumulators, and the bias."""

    weights: dict[str, float] = field(default_factory=dict)
    accumulated: dict[str, float] = field(default_factory=dict)
    bias: float = 0.0
    bias_accumulated: float = 0.0
    outcomes: int = 0


def probability(model: Weights, x: Mapping[str, float]) -> float:
    """P(won or qualified) for features `x`."""
    return _sigmoid(model.bias + sum(model.weights.get(token, 0.0) * value for token, value in x.items()))


def learn(model: Weights, x: Mapping[str, float], label: int) -> set[str]:
    """One AdaGrad step of logistic regression on one outcome; returns the tokens whose weights changed."""
    error = probability(model, x) - label
    model.bias_accumulated += error * error
    model.bias -= LEARNING_RATE * error / math.sqrt(model.bias_accumulated + 1e-9)
    for token, value in x.items():
        weight = model.weights.get(token, 0.0)
        gradient = error * value + L2 * weight
        model.accumulated[token] = model.accumulated.get(token, 0.0) + gradient * gradient
        model.weights[token] = weight - LEARNING_RATE * gradient / math.sqrt(model.accumulated[token] + 1e-9)
    model.outcomes += 1
    return set(x)


def explain(model: Weights, x: Mapping[str, float], *, top: int = 3) -> list[tuple[str, float]]:
    """The tokens that moved the probability most, with their push on the log-odds."""
    pushes = [(token, model.weights.get(token, 0.0) * value) for token, value in x.items()]
    return sorted((push for push in pushes if push[1]), key=lambda push: -abs(push[1]))[:top]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    exp = math.exp(z)
    return exp / (1.0 + exp)


def blend(rules_score: int, learned: float | None, *, weight: float, outcomes: int, warm_up: int = 50) -> int:
    """Rules and the learned probability on one 0-100 scale; the model's say grows as it learns from outcomes."""
    if learned is None or outcomes == 0:
        return rules_score
    trust = weight * min(1.0, outcomes / warm_up)
    return max(0, min(100, round((1 - trust) * rules_score + trust * 100 * learned)))
