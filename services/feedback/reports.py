"""Reports marketers and sales read together, computed from summed report cells only (pure).

A report takes, per dimension it needs, the cells summed over a range of capture days ({value: {metric: sum}}) and
answers rows per group plus totals. Totals come from the `all` dimension, not from adding rows: a lead counts once
in `all` but may count under several values of a multi-valued dimension such as `interest`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from services.feedback.aggregates import BUCKETS, DIMENSIONS, NONE, percentile_from_buckets

Sums = Mapping[str, Any]  # metric -> sum, for one group
Cells = Mapping[str, Mapping[str, Sums]]  # dimension -> value -> sums
Row = dict[str, Any]

REPORTS = ("funnel", "speed", "revenue", "competitors", "calibration", "recycled")
DEFAULT_DAYS = 30
MAX_RANGE_DAYS = 3 * 365 + 1
TOTAL = "TOTAL"
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CENT = Decimal("0.01")
_SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


class ReportQueryError(ValueError):
    """A query parameter a report cannot answer; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# --- query parameters ------------------------------------------------------------------------------------------------


def parse_day(field: str, text: str) -> date:
    """A YYYY-MM-DD date, or ReportQueryError naming `field`."""
    try:
        if not _ISO_DATE.match(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ReportQueryError(field, "must be a date as YYYY-MM-DD") from None


def day_range(day_from: str | None, day_to: str | None, *, today: date) -> tuple[date, date]:
    """The capture days asked for: the last 30 days by default; from <= to, at most three years."""
    end = parse_day("to", day_to) if day_to else today
    start = parse_day("from", day_from) if day_from else end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise ReportQueryError("from", "must not be after 'to'")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise ReportQueryError("from", f"the range may span at most {MAX_RANGE_DAYS} days")
    return start, end


def check_report(report: str, group_by: str) -> None:
    """ReportQueryError unless the report and the dimension exist."""
    if report not in REPORTS:
        raise ReportQueryError("report", f"unknown report; one of {', '.join(REPORTS)}")
    if group_by not in DIMENSIONS:
        raise ReportQueryError("group_by", f"unknown dimension; one of {', '.join(DIMENSIONS)}")


def effective_group_by(report: str, group_by: str) -> str:
    """What the report really groups by (some reports have one natural grouping)."""
    fixed = {"revenue": "campaign", "competitors": "competitor", "calibration": "score_band"}
    return fixed.get(report, group_by)


def dimensions_needed(report: str, group_by: str) -> tuple[str, ...]:
    """The dimensions whose summed cells the report reads."""
    grouped = effective_group_by(report, group_by)
    extra = {
        "speed": ("rep",),
        "revenue": ("last_campaign",),
        "competitors": ("lost_to", "lost_reason"),
    }.get(report, ())
    return tuple(dict.fromkeys(("all", grouped, *extra)))


# --- arithmetic ------------------------------------------------------------------------------------------------------


def rate(numerator: Any, denominator: Any) -> float | None:
    """numerator / denominator rounded to 4 decimals; None when the denominator is 0."""
    if not denominator:
        return None
    return round(float(numerator) / float(denominator), 4)


def money(amount: Any) -> str:
    """An amount as a decimal string with 2 places."""
    return str(Decimal(str(amount or 0)).quantize(_CENT))


def _count(sums: Sums, metric: str) -> int:
    return int(sums.get(metric, 0) or 0)


def _histogram(sums: Sums, name: str) -> list[float]:
    return [float(sums.get(f"{name}_b{n}", 0) or 0) for n in range(BUCKETS)]


# --- row builders: one group's sums in, one row out ------------------------------------------------------------------


def funnel_row(sums: Sums) -> Row:
    """Captured to won, with the rate of every step."""
    captured, mql, accepted, sql, won = (_count(sums, name) for name in ("captured", "mql", "accepted", "sql", "won"))
    return {
        "captured": captured,
        "mql": mql,
        "accepted": accepted,
        "sql": sql,
        "won": won,
        "mql_rate": rate(mql, captured),
        "accept_rate": rate(accepted, mql),
        "sql_rate": rate(sql, accepted),
        "win_rate": rate(won, sql),
        "overall_rate": rate(won, captured),
    }


def speed_row(sums: Sums) -> Row:
    """Speed to assign and to first touch (p50/p90/p99 seconds) and SLA compliance."""
    row: Row = {}
    for name, count in (("assign", "assigned"), ("touch", "touched")):
        counts = _histogram(sums, name)
        row[count] = _count(sums, count)
        for share in (50, 90, 99):
            row[f"{name}_p{share}"] = percentile_from_buckets(counts, share / 100)
    met, missed_leads = _count(sums, "sla_met"), _count(sums, "sla_missed_leads")
    row.update(
        sla_met=met,
        sla_missed_leads=missed_leads,
        sla_misses=_count(sums, "sla_missed"),
        sla_compliance=rate(met, met + missed_leads),
    )
    return row


def recycled_row(sums: Sums) -> Row:
    """How recycled leads come back."""
    recycled = _count(sums, "recycled")
    requalified, won = _count(sums, "recycled_requalified"), _count(sums, "recycled_won")
    return {
        "recycled": recycled,
        "recycled_requalified": requalified,
        "recycled_won": won,
        "requalify_rate": rate(requalified, recycled),
        "win_rate": rate(won, recycled),
    }


def revenue_row(first: Sums, last: Sums) -> Row:
    """Won deals and revenue credited to the first and to the last campaign, and the open pipeline."""
    return {
        "first_touch_won": _count(first, "won"),
        "first_touch_revenue": money(first.get("won_amount")),
        "last_touch_won": _count(last, "won"),
        "last_touch_revenue": money(last.get("won_amount")),
        "open_pipeline": _count(first, "open_sql"),
        "sql": _count(first, "sql"),
    }


def competitor_row(sums: Sums) -> Row:
    """How leads that named a competitor end."""
    won, lost = _count(sums, "won"), _count(sums, "lost")
    return {"leads": _count(sums, "captured"), "won": won, "lost": lost, "win_rate": rate(won, won + lost)}


def calibration_row(sums: Sums) -> Row:
    """Predicted against actual win rate of decided leads."""
    decided, won = _count(sums, "decided"), _count(sums, "won")
    predicted, actual = rate(sums.get("predicted_sum", 0), decided), rate(won, decided)
    gap = round(actual - predicted, 4) if actual is not None and predicted is not None else None
    return {"decided": decided, "won": won, "predicted_win_rate": predicted, "actual_win_rate": actual, "gap": gap}


FIELDS: dict[str, tuple[str, ...]] = {
    "funnel": tuple(funnel_row({})),
    "speed": tuple(speed_row({})),
    "revenue": tuple(revenue_row({}, {})),
    "competitors": tuple(competitor_row({})),
    "calibration": tuple(calibration_row({})),
    "recycled": tuple(recycled_row({})),
}

# What orders the rows (descending, then by group).
_MAIN = {
    "funnel": "captured",
    "speed": "assigned",
    "revenue": "first_touch_won",
    "competitors": "leads",
    "recycled": "recycled",
}
_SIMPLE: dict[str, Callable[[Sums], Row]] = {
    "funnel": funnel_row,
    "speed": speed_row,
    "competitors": competitor_row,
    "calibration": calibration_row,
    "recycled": recycled_row,
}


# --- whole reports ---------------------------------------------------------------------------------------------------


def build_report(report: str, *, group_by: str, day_from: date, day_to: date, cells: Cells) -> dict[str, Any]:
    """The report's document: rows per group (main count descending, then group) and totals."""
    grouped = effective_group_by(report, group_by)
    rows, totals = _rows_and_totals(report, grouped, cells)
    body: dict[str, Any] = {
        "report": report,
        "from": day_from.isoformat(),
        "to": day_to.isoformat(),
        "group_by": grouped,
        "rows": rows,
        "totals": totals,
    }
    if report == "competitors":
        body["lost_to"] = ranked(cells.get("lost_to", {}), ("lost",))
        body["lost_reasons"] = ranked(cells.get("lost_reason", {}), ("lost", "disqualified"))
    return body


def _rows_and_totals(report: str, grouped: str, cells: Cells) -> tuple[list[Row], Row]:
    every = cells.get("all", {}).get("all", {})
    groups = cells.get(grouped, {})
    if report == "revenue":
        last = cells.get("last_campaign", {})
        names = sorted(set(groups) | set(last))
        rows = [{"group": name, **revenue_row(groups.get(name, {}), last.get(name, {}))} for name in names]
        return _kept(report, rows), revenue_row(every, every)
    build = _SIMPLE[report]
    rows = [{"group": name, **build(sums)} for name, sums in groups.items()]
    totals = build(every)
    return _kept(report, rows), totals


def _kept(report: str, rows: list[Row]) -> list[Row]:
    # Cells left at zero (a lead moved to another rep or campaign) are not worth a row.
    kept = [row for row in rows if any(_counts(value) for name, value in row.items() if name != "group")]
    if report == "calibration":
        return sorted(kept, key=lambda row: _band_order(row["group"]))
    return sorted(kept, key=lambda row: (-row[_MAIN[report]], row["group"]))


def _counts(value: Any) -> bool:
    return (isinstance(value, int) and value != 0) or (isinstance(value, str) and Decimal(value) != 0)


def _band_order(band: str) -> tuple[int, str]:
    low = band.split("-", 1)[0]
    return (int(low), band) if low.isdigit() else (1000, band)


def ranked(groups: Mapping[str, Sums], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """[{group, lost}] of groups with a count, largest first, leaving out leads with no value."""
    counted = [(name, sum(_count(sums, metric) for metric in metrics)) for name, sums in groups.items()]
    return [
        {"group": name, "lost": lost}
        for name, lost in sorted(counted, key=lambda item: (-item[1], item[0]))
        if lost > 0 and name != NONE
    ]


# --- CSV -------------------------------------------------------------------------------------------------------------


def to_csv(body: Mapping[str, Any]) -> str:
    """The report's rows as CSV: a header of the row fields with `group` first, and the totals last as TOTAL."""
    fields = ("group", *FIELDS[body["report"]])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(fields)
    for row in [*body["rows"], {"group": TOTAL, **body["totals"]}]:
        writer.writerow([_csv_cell(name, row.get(name)) for name in fields])
    return out.getvalue()


def _csv_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    # Group names come from UTM tags and forms: never let a spreadsheet run them as formulas.
    if name == "group" and text.startswith(_SPREADSHEET_FORMULA):
        return "'" + text
    return text
