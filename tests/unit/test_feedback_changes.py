"""aggregates.changes: for every cell, what contributions(after) holds minus what contributions(before) held, whatever
changed on the card (it works the difference out per dimension; the definition is the full diff)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.feedback.aggregates import Delta, LeadCard, changes, contributions

T0 = datetime(2026, 11, 30, 9, tzinfo=UTC)
TEXT_FIELDS = ("source", "medium", "campaign", "last_campaign", "form", "country", "region", "company_size",
               "industry", "seniority", "competitor", "grade", "rep_id", "team", "lost_reason", "lost_to")  # fmt: skip
TIME_FIELDS = ("qualified_at", "assigned_at", "touched_at", "accepted_at", "sql_at", "won_at", "lost_at")


def full_diff(before: LeadCard | None, after: LeadCard) -> list[Delta]:
    """The definition: every cell of either card, after's amounts minus before's, the cells that move, sorted."""
    old, new = contributions(before), contributions(after)
    if before is not None and before.day != after.day:
        return [*(Delta(before.day, d, v, {n: -a for n, a in amounts.items()}) for (d, v), amounts in old.items()),
                *(Delta(after.day, d, v, dict(amounts)) for (d, v), amounts in sorted(new.items()))]  # fmt: skip
    deltas = []
    for cell in sorted(old.keys() | new.keys()):
        was, now = old.get(cell, {}), new.get(cell, {})
        moved = {name: now.get(name, 0) - was.get(name, 0) for name in was.keys() | now.keys()}  # type: ignore[operator]
        if moved := {name: amount for name, amount in moved.items() if amount != 0}:
            deltas.append(Delta(after.day, cell[0], cell[1], moved))
    return deltas


def random_card(rng: random.Random, lead_id: str) -> LeadCard:
    values: dict[str, Any] = {name: rng.choice([None, "", "a", "b"]) for name in TEXT_FIELDS}
    values.update({name: rng.choice([None, T0 + timedelta(seconds=rng.choice([0, 3, 400, 90000]))])
                   for name in TIME_FIELDS})  # fmt: skip
    return LeadCard(
        lead_id=lead_id, captured_at=T0 + timedelta(days=rng.choice([0, 0, 0, 1])),
        interests=tuple(rng.sample(["x", "y", "z"], rng.randint(0, 3))), score=rng.choice([None, 5, 45, 99]),
        predicted=rng.choice([None, 0.0, 0.25]), state=rng.choice(["open", "won", "lost", "disqualified"]),
        won_amount=rng.choice([None, Decimal("0"), Decimal("1250.50")]), recycled=rng.choice([0, 0, 2]),
        recycled_requalified=rng.random() < 0.2, recycled_won=rng.random() < 0.2,
        sla_missed_by=tuple(rng.choice(["a", "b", "c"]) for _ in range(rng.choice([0, 0, 1, 3]))),
        sla_met=rng.random() < 0.5, **values,
    )  # fmt: skip


def changed(rng: random.Random, card: LeadCard) -> LeadCard:
    """`card` with one to three fields taken from another random card (often the same value again)."""
    other = random_card(rng, card.lead_id)
    names = rng.sample([*TEXT_FIELDS, *TIME_FIELDS, "interests", "score", "state", "won_amount", "predicted",
                        "sla_missed_by", "sla_met", "recycled", "captured_at"], rng.randint(1, 3))  # fmt: skip
    return card.with_(**{name: getattr(other, name) for name in names})


@pytest.mark.parametrize("seed", range(8))
def test_changes_equal_the_full_diff_of_the_contributions(seed: int) -> None:
    rng = random.Random(seed)
    for number in range(400):
        before = random_card(rng, f"lead-{number}")
        after = changed(rng, before)
        assert changes(before, after) == full_diff(before, after)
        assert changes(None, before) == full_diff(None, before)
        assert changes(after, after) == []


def test_a_new_rep_moves_the_rep_cells_alone_and_keeps_misses_with_the_rep_who_missed() -> None:
    before = LeadCard(lead_id="l1", captured_at=T0, rep_id="a", assigned_at=T0, sla_missed_by=("a",))
    deltas = changes(before, before.with_(rep_id="b"))
    assert [(delta.dimension, delta.value, dict(delta.amounts)) for delta in deltas] == [
        ("rep", "a", {"captured": -1, "assigned": -1, "sla_missed_leads": -1, "assign_b0": -1}),
        ("rep", "b", {"captured": 1, "assigned": 1, "sla_missed_leads": 1, "assign_b0": 1}),
    ]
