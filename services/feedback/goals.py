"""Shared goals: where a target sales and marketing own together stands today (pure; `today` is passed in)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from services.feedback.aggregates import BUCKETS, percentile_from_buckets

GOAL_METRICS = ("captured", "mql", "sql", "won", "won_revenue", "speed_to_lead_p90")
LOWER_IS_BETTER = frozenset({"speed_to_lead_p90"})
# Speed to lead is the time from capture to the first touch by sales.
SPEED_HISTOGRAM = "touch"
_CELL_METRIC = {"won_revenue": "won_amount"}


@dataclass(frozen=True)
class Progress:
    """How far a goal has come; amounts are floats, `actual` is None while a speed goal has no touched lead."""

    actual: float | None
    progress: float | None
    expected_by_now: float
    forecast: float | None
    on_track: bool
    days_left: int


def period_days(start: date, end: date) -> int:
    """Days in the period, both ends included."""
    return (end - start).days + 1


def elapsed_days(start: date, end: date, *, today: date) -> int:
    """Days of the period up to and including today (0 before it starts, all of it after it ends)."""
    return max(0, min(period_days(start, end), (today - start).days + 1))


def measured_until(start: date, end: date, *, today: date) -> date | None:
    """The last capture day counted so far; None when the period has not started."""
    if today < start:
        return None
    return min(end, today)


def actual_of(metric: str, sums: Mapping[str, Any]) -> float | None:
    """The goal metric's value from summed report cells."""
    if metric == "speed_to_lead_p90":
        counts = [float(sums.get(f"{SPEED_HISTOGRAM}_b{n}", 0) or 0) for n in range(BUCKETS)]
        return percentile_from_buckets(counts, 0.9)
    return float(Decimal(str(sums.get(_CELL_METRIC.get(metric, metric), 0) or 0)))


def progress_of(
    metric: str, target: float, start: date, end: date, *, sums: Mapping[str, Any], today: date
) -> Progress:
    """Actual, share of target, what was due by today, the forecast at period end, on track, days left."""
    total, elapsed = period_days(start, end), elapsed_days(start, end, today=today)
    days_left = total - elapsed
    actual = actual_of(metric, sums)
    if metric in LOWER_IS_BETTER:
        return _lower_is_better(actual, target, days_left)
    done = actual or 0.0
    expected = target * elapsed / total
    forecast = done * total / elapsed if elapsed else done
    return Progress(
        actual=round(done, 2),
        progress=round(done / target, 4),
        expected_by_now=round(expected, 2),
        forecast=round(forecast, 2),
        on_track=done >= expected,
        days_left=days_left,
    )


def _lower_is_better(actual: float | None, target: float, days_left: int) -> Progress:
    # A speed target holds on every day of the period: what is due by now is the target itself,
    # and the best forecast is today's value.
    if actual is None:
        return Progress(None, None, round(target, 2), None, on_track=False, days_left=days_left)
    progress = 1.0 if actual <= 0 else min(1.0, target / actual)
    return Progress(
        actual=round(actual, 2),
        progress=round(progress, 4),
        expected_by_now=round(target, 2),
        forecast=round(actual, 2),
        on_track=actual <= target,
        days_left=days_left,
    )
