"""Report aggregates kept as events arrive, so reports never scan leads.

Each lead has a card (what marketing and sales know about it: origin, segment, score, owner, lifecycle, speed).
A card contributes to report cells: for its capture day (the cohort), for every dimension marketers group by
and the card's value in it, a set of metric amounts. When a card changes, the difference between its old and new
contributions is added to the cells — so the cells always equal what a full scan of the cards would give.
Pure: the store applies the deltas.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

# Speed-to-lead histogram: upper bounds in seconds (the last bucket is everything slower).
BUCKET_BOUNDS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 172800,
                 604800)  # fmt: skip
BUCKETS = len(BUCKET_BOUNDS) + 1
COUNT_METRICS = (
    "captured", "mql", "accepted", "sql", "won", "lost", "disqualified", "recycled", "recycled_requalified",
    "recycled_won", "open_sql", "sla_met", "sla_missed", "sla_missed_leads", "decided", "assigned", "touched",
)  # fmt: skip
AMOUNT_METRICS = ("won_amount", "predicted_sum")
HISTOGRAMS = ("assign", "touch")
METRICS = (*COUNT_METRICS, *AMOUNT_METRICS, *(f"{name}_b{n}" for name in HISTOGRAMS for n in range(BUCKETS)))

DIMENSIONS = (
    "all", "source", "medium", "campaign", "last_campaign", "form", "country", "region", "company_size", "industry",
    "seniority", "interest", "competitor", "grade", "score_band", "rep", "team", "lost_reason", "lost_to",
)  # fmt: skip
NONE = "(none)"

Cell = tuple[str, str]  # (dimension, value)


@dataclass(frozen=True)
class LeadCard:
    """What is known about one lead, for reports and search."""

    lead_id: str
    captured_at: datetime
    email: str | None = None
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    last_campaign: str | None = None
    form: str | None = None
    country: str | None = None
    region: str | None = None
    company_size: str | None = None
    industry: str | None = None
    seniority: str | None = None
    interests: tuple[str, ...] = ()
    competitor: str | None = None
    score: int | None = None
    grade: str | None = None
    verdict: str | None = None
    predicted: float | None = None  # the learned probability of winning (or score / 100)
    rep_id: str | None = None
    team: str | None = None
    state: str = "open"
    stage: str = "captured"
    qualified_at: datetime | None = None
    assigned_at: datetime | None = None
    touched_at: datetime | None = None
    accepted_at: datetime | None = None
    sql_at: datetime | None = None
    won_at: datetime | None = None
    won_amount: Decimal | None = None
    currency: str | None = None
    lost_at: datetime | None = None
    lost_reason: str | None = None
    lost_to: str | None = None
    recycled: int = 0
    recycled_requalified: bool = False
    recycled_won: bool = False
    sla_missed_by: tuple[str, ...] = ()
    sla_met: bool = False

    @property
    def day(self) -> str:
        """The cohort: the capture date (UTC)."""
        return self.captured_at.date().isoformat()

    def with_(self, **changes: Any) -> LeadCard:
        """A copy with `changes` (fields copied as they are, not through __init__: a fifth of the time of
        dataclasses.replace, for the commonest step of feedback's work)."""
        if not changes.keys() <= _CARD_FIELDS:
            raise TypeError(f"not fields of a lead card: {sorted(changes.keys() - _CARD_FIELDS)}")
        card = object.__new__(LeadCard)
        card.__dict__.update(self.__dict__)
        card.__dict__.update(changes)
        return card


_CARD_FIELDS = frozenset(field.name for field in fields(LeadCard))


def score_band(score: int | None) -> str:
    """Score bands of 20 points: '0-19' ... '80-100'."""
    if score is None:
        return NONE
    low = min(score // 20 * 20, 80)
    return f"{low}-{100 if low == 80 else low + 19}"


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration."""
    return bisect.bisect_left(BUCKET_BOUNDS, seconds)


def _values(card: LeadCard, dimension: str) -> Iterable[str]:
    if dimension == "all":
        return ("all",)
    if dimension == "interest":
        return card.interests or (NONE,)
    if dimension == "score_band":
        return (score_band(card.score),)
    if dimension == "rep":
        return (card.rep_id or NONE,)
    if dimension == "form":
        return (card.form or NONE,)
    value = getattr(card, dimension)
    return (str(value) if value not in (None, "") else NONE,)


def _metrics(card: LeadCard) -> dict[str, float | Decimal]:
    amounts: dict[str, float | Decimal] = {"captured": 1}
    flags = {
        "mql": card.qualified_at is not None,
        "accepted": card.accepted_at is not None,
        "sql": card.sql_at is not None,
        "won": card.state == "won",
        "lost": card.state == "lost",
        "disqualified": card.state == "disqualified",
        "recycled": card.recycled > 0,
        "recycled_requalified": card.recycled_requalified,
        "recycled_won": card.recycled_won,
        "open_sql": card.sql_at is not None and card.state == "open",
        "sla_met": card.sla_met,
        "sla_missed_leads": bool(card.sla_missed_by),
        "decided": card.state in ("won", "lost"),
        "assigned": card.assigned_at is not None,
        "touched": card.touched_at is not None,
    }
    amounts.update({name: 1 for name, on in flags.items() if on})
    if card.state == "won" and card.won_amount is not None:
        amounts["won_amount"] = stored_amount(card.won_amount)
    if card.state in ("won", "lost"):
        amounts["predicted_sum"] = stored_amount(
            card.predicted if card.predicted is not None else (card.score or 0) / 100
        )
    if card.assigned_at is not None:
        amounts[f"assign_b{bucket_of((card.assigned_at - card.captured_at).total_seconds())}"] = 1
    if card.touched_at is not None:
        amounts[f"touch_b{bucket_of((card.touched_at - card.captured_at).total_seconds())}"] = 1
    return amounts


_FOUR_PLACES = Decimal("0.0001")


def stored_amount(amount: float | Decimal) -> Decimal:
    """An amount as the cells keep it (NUMERIC(20, 4), rounded half away from zero): a card's amounts are these
    exactly, so cells moved by any sequence of changes hold the exact sum of their cards' amounts."""
    return Decimal(amount).quantize(_FOUR_PLACES, ROUND_HALF_UP)


def contributions(card: LeadCard | None) -> dict[Cell, dict[str, float | Decimal]]:
    """What the card adds to each (dimension, value) cell of its capture day."""
    if card is None:
        return {}
    metrics = _card_metrics(card)
    cells: dict[Cell, dict[str, float | Decimal]] = {}
    for dimension in DIMENSIONS:
        if dimension == "rep":
            cells.update(_rep_cells(card, metrics))
        else:
            cells.update(((dimension, value), dict(metrics)) for value in _values(card, dimension))
    return cells


def _card_metrics(card: LeadCard) -> dict[str, float | Decimal]:
    metrics = _metrics(card)
    if card.sla_missed_by:
        metrics["sla_missed"] = len(card.sla_missed_by)
    return metrics


def _rep_cells(card: LeadCard, metrics: Mapping[str, float | Decimal]) -> dict[Cell, dict[str, float | Decimal]]:
    # Per rep, a miss belongs to the rep who missed, not to whoever has the lead now.
    cells = {("rep", card.rep_id or NONE): {name: amount for name, amount in metrics.items() if name != "sla_missed"}}
    for rep_id, misses in _count(card.sla_missed_by).items():
        missed = cells.setdefault(("rep", rep_id), {})
        missed["sla_missed"] = missed.get("sla_missed", 0) + misses
    return cells


def _count(items: Iterable[str]) -> dict[str, int]:
    counted: dict[str, int] = defaultdict(int)
    for item in items:
        counted[item] += 1
    return counted


class Delta(NamedTuple):
    """Amounts to add to one cell (a tuple: feedback makes tens of these per card it changes)."""

    day: str
    dimension: str
    value: str
    amounts: Mapping[str, float | Decimal]


def changes(before: LeadCard | None, after: LeadCard) -> list[Delta]:
    """What to add to the cells when a lead's card goes from `before` to `after` (nothing for no change): for every
    cell, its amounts in contributions(after) minus those in contributions(before), the cells that move sorted."""
    if before is not None and before.day != after.day:
        return [*_negated(before.day, contributions(before)), *(_as_deltas(after.day, contributions(after)))]
    moved = sorted(_moved_cells(before, after).items())
    return [Delta(after.day, dimension, value, amounts) for (dimension, value), amounts in moved]


CellSums = dict[tuple[str, str, str], dict[str, float | Decimal]]  # (day, dimension, value) -> metric -> amount


def add_change(sums: CellSums, before: LeadCard | None, after: LeadCard) -> None:
    """Add to `sums` what changes(before, after) adds to the cells: a batch's cards add their changes into one dict,
    without a list of deltas per card to build and sort."""
    if before is not None and before.day != after.day:
        for delta in changes(before, after):
            add_amounts(sums, (delta.day, delta.dimension, delta.value), delta.amounts)
        return
    day = after.day
    for (dimension, value), amounts in _moved_cells(before, after).items():
        add_amounts(sums, (day, dimension, value), amounts)


def add_amounts(sums: CellSums, cell: tuple[str, str, str], amounts: Mapping[str, float | Decimal]) -> None:
    """Add `amounts` to the cell's sums in `sums` (a new cell starts from a copy of them)."""
    total = sums.get(cell)
    if total is None:
        sums[cell] = dict(amounts)  # a copy: cells of one card share their amounts
        return
    for name, amount in amounts.items():
        total[name] = total.get(name, 0) + amount  # type: ignore[operator]  # a metric is all floats or all Decimals


def _moved_cells(before: LeadCard | None, after: LeadCard) -> dict[Cell, dict[str, float | Decimal]]:
    """The cells of the card's capture day that move when it goes from `before` (of the same day) to `after`, and by
    how much (the amounts may be shared between cells).

    Worked out per dimension from the two cards' metrics, rather than from their two full sets of cells (a dict of
    metrics per cell per card): half the time, for a run of feedback's commonest work."""
    was = _card_metrics(before) if before is not None else {}
    now = _card_metrics(after)
    # A cell of both cards moves by the metrics' change (`kept`); one of `before` alone loses them (`left`), one of
    # `after` gains them (`joined`). The last two only where a dimension's values differ: worked out when first needed.
    kept = _moved(was, now)
    left: dict[str, float | Decimal] | None = None
    joined = kept if before is None else None
    cells: dict[Cell, dict[str, float | Decimal]] = {}
    for dimension in DIMENSIONS:
        if dimension == "rep":
            old_cells = _rep_cells(before, was) if before is not None else {}
            new_cells = _rep_cells(after, now)
            for cell in old_cells.keys() | new_cells.keys():
                if moved := _moved(old_cells.get(cell, {}), new_cells.get(cell, {})):
                    cells[cell] = moved
            continue
        new_values = tuple(_values(after, dimension))
        old_values = tuple(_values(before, dimension)) if before is not None else ()
        if old_values == new_values or not old_values:  # the commonest cases, without sets (`kept` is `joined` then)
            if kept:
                for value in new_values:
                    cells[(dimension, value)] = kept
            continue
        if left is None or joined is None:
            left, joined = _moved(was, {}), _moved({}, now)
        for value in set(old_values) | set(new_values):
            moved = (kept if value in new_values else left) if value in old_values else joined
            if moved:
                cells[(dimension, value)] = moved
    return cells


def _moved(was: Mapping[str, float | Decimal], now: Mapping[str, float | Decimal]) -> dict[str, float | Decimal]:
    """now - was, name by name, without the names that did not move."""
    moved = {name: now.get(name, 0) - was.get(name, 0) for name in was.keys() | now.keys()}  # type: ignore[operator]
    return {name: amount for name, amount in moved.items() if amount != 0}


def _as_deltas(day: str, cells: Mapping[Cell, Mapping[str, float | Decimal]]) -> list[Delta]:
    return [Delta(day, dimension, value, dict(amounts)) for (dimension, value), amounts in sorted(cells.items())]


def _negated(day: str, cells: Mapping[Cell, Mapping[str, float | Decimal]]) -> list[Delta]:
    return [Delta(day, d, v, {name: -amount for name, amount in amounts.items()}) for (d, v), amounts in cells.items()]


def percentile_from_buckets(counts: list[float], share: float) -> float | None:
    """The upper bound (seconds) of the bucket where the `share` quantile falls; None without data. The slowest
    bucket has no bound: it answers the last bound, meaning 'more than that'."""
    total = sum(counts)
    if total <= 0:
        return None
    running = 0.0
    for index, count in enumerate(counts):
        running += count
        if running >= share * total:
            return float(BUCKET_BOUNDS[min(index, len(BUCKET_BOUNDS) - 1)])
    return float(BUCKET_BOUNDS[-1])
