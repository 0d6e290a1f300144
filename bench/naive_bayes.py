"""The baseline Baton is measured against: Odoo-CRM-style predictive lead scoring.

Odoo keeps, per field and value, how many won and lost leads carried it, and multiplies those frequencies into a
probability (naive Bayes). Here with Laplace smoothing: P(value | class) = (count + alpha) / (class count of the
field + alpha * (distinct values + 1)), the extra slot standing for values never seen. Empty fields say nothing.
Numbers fall into the same log-spaced buckets Baton's learner uses (3 and 4 visits alike, 3 and 300 not), so both
models see the same information and the comparison is about the model. Pure Python, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class FrequencyTables:
    """Won/lost counts per field and value, and per class overall; grown one outcome at a time."""

    alpha: float = 1.0
    classes: Counter[int] = field(default_factory=Counter)
    answered: dict[str, Counter[int]] = field(default_factory=dict)
    counts: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    values: dict[str, set[str]] = field(default_factory=dict)


def category(value: str) -> str:
    """The value as a category: trimmed and lower-cased text, or a log2 bucket for a number."""
    text = value.strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return f"~{int(math.copysign(math.floor(math.log2(1 + abs(number))), number))}"


def add_outcome(tables: FrequencyTables, row: Mapping[str, str], label: int) -> None:
    """Count one lead whose outcome is known (label 1 won, 0 lost)."""
    tables.classes[label] += 1
    for name, value in row.items():
        if not value.strip():
            continue
        key = (name, category(value))
        tables.answered.setdefault(name, Counter())[label] += 1
        tables.counts.setdefault(key, Counter())[label] += 1
        tables.values.setdefault(name, set()).add(key[1])


def train(rows: Iterable[tuple[Mapping[str, str], int]], *, alpha: float = 1.0) -> FrequencyTables:
    """Frequency tables of every (row, label) given."""
    tables = FrequencyTables(alpha=alpha)
    for row, label in rows:
        add_outcome(tables, row, label)
    return tables


def probability(tables: FrequencyTables, row: Mapping[str, str]) -> float:
    """P(won) of a lead: the prior odds times each answered field's likelihood ratio."""
    total = tables.classes[1] + tables.classes[0]
    if total == 0:
        return 0.5
    # Smoothed prior too, so a table that has seen one class only still answers.
    log_odds = math.log((tables.classes[1] + tables.alpha) / (tables.classes[0] + tables.alpha))
    for name, value in row.items():
        if not value.strip() or name not in tables.answered:
            continue
        log_odds += _log_likelihood_ratio(tables, name, category(value))
    return _sigmoid(log_odds)


def _log_likelihood_ratio(tables: FrequencyTables, name: str, value: str) -> float:
    seen = tables.counts.get((name, value), Counter())
    slots = len(tables.values[name]) + 1
    answered = tables.answered[name]
    won = (seen[1] + tables.alpha) / (answered[1] + tables.alpha * slots)
    lost = (seen[0] + tables.alpha) / (answered[0] + tables.alpha * slots)
    return math.log(won / lost)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    exp = math.exp(z)
    return exp / (1.0 + exp)
