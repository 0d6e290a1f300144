"""Reports and goals computed from summed report cells: pure, no database."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.feedback import goals, reports
from services.feedback.aggregates import LeadCard, contributions
from services.feedback.reports import ReportQueryError

T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)
DAY = date(2024, 5, 1)


def card(lead_id: str, **values: Any) -> LeadCard:
    return LeadCard(lead_id=lead_id, captured_at=T0, **values)


def won(lead_id: str, amount: str = "1000", **values: Any) -> LeadCard:
    return card(lead_id, qualified_at=T0, accepted_at=T0, sql_at=T0, state="won", won_amount=Decimal(amount), **values)


def summed(*cards: LeadCard) -> dict[str, dict[str, dict[str, Any]]]:
    """What report_store.summed_cells answers, dimension by dimension, for these cards."""
    cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for each in cards:
        for (dimension, value), amounts in contributions(each).items():
            for metric, amount in amounts.items():
                cells[dimension][value][metric] += amount
    return cells


def build(report: str, *cards: LeadCard, group_by: str = "all") -> dict[str, Any]:
    return reports.build_report(report, group_by=group_by, day_from=DAY, day_to=DAY, cells=summed(*cards))


def test_funnel_counts_each_step_with_rates_and_sorts_rows_by_captured() -> None:
    body = build(
        "funnel",
        won("a", source="webinar"),
        card("b", source="webinar", qualified_at=T0),
        card("c", source="ads"),
        card("d", source="ads"),
        card("e", source="ads"),
        group_by="source",
    )
    assert body["report"] == "funnel" and body["from"] == body["to"] == "2024-05-01" and body["group_by"] == "source"
    assert [row["group"] for row in body["rows"]] == ["ads", "webinar"]
    webinar = body["rows"][1]
    assert webinar == {
        "group": "webinar",
        "captured": 2,
        "mql": 2,
        "accepted": 1,
        "sql": 1,
        "won": 1,
        "mql_rate": 1.0,
        "accept_rate": 0.5,
        "sql_rate": 1.0,
        "win_rate": 1.0,
        "overall_rate": 0.5,
    }
    assert body["rows"][0]["accept_rate"] is None  # no MQL: no denominator
    assert body["totals"]["captured"] == 5 and body["totals"]["overall_rate"] == 0.2
    assert "group" not in body["totals"]


def test_totals_count_a_lead_once_when_a_dimension_has_several_values() -> None:
    body = build("funnel", card("a", interests=("crm", "ai")), card("b", interests=("crm",)), group_by="interest")
    assert {row["group"]: row["captured"] for row in body["rows"]} == {"crm": 2, "ai": 1}
    assert body["totals"]["captured"] == 2


def test_rates_round_to_four_decimals() -> None:
    body = build("funnel", card("a", qualified_at=T0), card("b"), card("c"))
    assert body["totals"]["mql_rate"] == 0.3333


def test_speed_reads_percentiles_from_the_histograms_and_attributes_misses_to_the_rep_who_missed() -> None:
    fast = card("a", rep_id="ann", assigned_at=T0 + timedelta(seconds=1), touched_at=T0 + timedelta(seconds=50))
    slow = card(
        "b",
        rep_id="bob",
        assigned_at=T0 + timedelta(seconds=4),
        touched_at=T0 + timedelta(hours=2),
        sla_missed_by=("ann", "ann"),
    )
    met = card("c", rep_id="bob", sla_met=True, source="ads")
    body = build("speed", fast, slow, met, group_by="rep")
    rows = {row["group"]: row for row in body["rows"]}
    assert rows["ann"]["assign_p50"] == 1.0 and rows["ann"]["touch_p99"] == 60.0
    assert rows["ann"]["sla_misses"] == 2 and rows["bob"]["sla_misses"] == 0
    assert rows["bob"]["sla_compliance"] == 0.5  # one met, one of bob's leads missed
    assert body["totals"]["assigned"] == 2 and body["totals"]["assign_p90"] == 5.0
    assert body["totals"]["sla_misses"] == 2 and body["totals"]["sla_compliance"] == 0.5
    assert build("speed", met, group_by="source")["rows"][0]["assign_p50"] is None


def test_sla_misses_by_campaign_count_each_miss_of_the_campaigns_leads() -> None:
    missed_twice = card("a", campaign="spring", assigned_at=T0, sla_missed_by=("ann", "bob"))
    on_time = card("b", campaign="autumn", assigned_at=T0, sla_met=True)
    body = build("speed", missed_twice, on_time, group_by="campaign")
    rows = {row["group"]: row for row in body["rows"]}
    assert (rows["spring"]["sla_misses"], rows["autumn"]["sla_misses"]) == (2, 0)
    assert body["totals"]["sla_misses"] == 2
    assert build("speed", card("a", assigned_at=T0, sla_missed_by=("ann",)))["rows"][0]["sla_misses"] == 1


def test_revenue_credits_first_and_last_campaign_with_amounts_as_decimal_strings() -> None:
    body = build(
        "revenue",
        won("a", "1200.5", campaign="spring", last_campaign="retarget"),
        won("b", "300", campaign="spring", last_campaign="spring"),
        card("c", campaign="summer", sql_at=T0),
        group_by="source",
    )
    assert body["group_by"] == "campaign"
    rows = {row["group"]: row for row in body["rows"]}
    assert [row["group"] for row in body["rows"]] == ["spring", "retarget", "summer"]
    assert rows["spring"] == {
        "group": "spring",
        "first_touch_won": 2,
        "first_touch_revenue": "1500.50",
        "last_touch_won": 1,
        "last_touch_revenue": "300.00",
        "open_pipeline": 0,
        "sql": 2,
    }
    assert rows["retarget"]["last_touch_revenue"] == "1200.50" and rows["retarget"]["first_touch_won"] == 0
    assert rows["summer"]["open_pipeline"] == 1
    assert body["totals"]["first_touch_revenue"] == body["totals"]["last_touch_revenue"] == "1500.50"


def test_competitors_rank_who_we_lose_to_and_why() -> None:
    body = build(
        "competitors",
        won("a", competitor="Acme"),
        card("b", competitor="Acme", state="lost", lost_to="Acme", lost_reason="price"),
        card("c", competitor="Acme", state="lost", lost_to="Globex", lost_reason="price"),
        card("d", state="disqualified", lost_reason="no budget"),
        card("e", state="lost", lost_to="Globex", lost_reason="price"),
    )
    assert body["group_by"] == "competitor"
    acme = body["rows"][0]
    assert acme == {"group": "Acme", "leads": 3, "won": 1, "lost": 2, "win_rate": 0.3333}
    assert body["lost_to"] == [{"group": "Globex", "lost": 2}, {"group": "Acme", "lost": 1}]
    assert body["lost_reasons"] == [{"group": "price", "lost": 3}, {"group": "no budget", "lost": 1}]


def test_calibration_orders_bands_and_compares_predicted_with_actual() -> None:
    body = build(
        "calibration",
        won("a", score=85, predicted=0.8),
        card("b", score=90, predicted=0.6, state="lost"),
        card("c", score=10, predicted=0.1, state="lost"),
        card("d", score=None, state="lost"),
        card("e", score=50),  # open: not decided, no row
    )
    assert [row["group"] for row in body["rows"]] == ["0-19", "80-100", "(none)"]
    high = body["rows"][1]
    assert high == {"group": "80-100", "decided": 2, "won": 1, "predicted_win_rate": 0.7, "actual_win_rate": 0.5,
                    "gap": -0.2}  # fmt: skip


def test_recycled_leads_come_back_or_not() -> None:
    body = build(
        "recycled",
        card("a", recycled=1, recycled_requalified=True, recycled_won=True),
        card("b", recycled=2),
        card("c"),
    )
    assert body["totals"] == {
        "recycled": 2,
        "recycled_requalified": 1,
        "recycled_won": 1,
        "requalify_rate": 0.5,
        "win_rate": 0.5,
    }


def test_empty_report_has_totals_of_zero_and_null_rates() -> None:
    body = reports.build_report("funnel", group_by="source", day_from=DAY, day_to=DAY, cells={})
    assert body["rows"] == [] and body["totals"]["captured"] == 0 and body["totals"]["win_rate"] is None


def test_csv_has_the_row_fields_group_first_and_totals_last() -> None:
    body = build("funnel", won("a", source="=HYPERLINK(1)"), card("b", source="ads"), group_by="source")
    lines = list(csv.reader(io.StringIO(reports.to_csv(body))))
    assert lines[0] == ["group", *reports.FIELDS["funnel"]]
    assert lines[1][0] == "'=HYPERLINK(1)"  # a spreadsheet must not run it
    assert lines[-1][:2] == ["TOTAL", "2"]
    assert lines[2][reports.FIELDS["funnel"].index("accept_rate") + 1] == ""  # null is an empty cell


def test_every_report_lists_the_fields_its_rows_have() -> None:
    for report in reports.REPORTS:
        body = build(report, won("a", source="x", campaign="x", competitor="x", score=90, rep_id="x", recycled=1))
        assert all(list(row) == ["group", *reports.FIELDS[report]] for row in body["rows"])
        assert list(body["totals"]) == list(reports.FIELDS[report])


def test_range_defaults_to_the_last_30_days() -> None:
    assert reports.day_range(None, None, today=date(2024, 5, 31)) == (date(2024, 5, 2), date(2024, 5, 31))
    assert reports.day_range(None, "2024-01-30", today=DAY) == (date(2024, 1, 1), date(2024, 1, 30))


@pytest.mark.parametrize(
    ("day_from", "day_to", "field"),
    [
        ("2024-13-01", None, "from"),
        ("yesterday", None, "from"),
        (None, "20240101", "to"),
        ("2024-05-02", "2024-05-01", "from"),
        ("2020-01-01", "2024-01-01", "from"),
    ],
)
def test_bad_ranges_name_the_field(day_from: str | None, day_to: str | None, field: str) -> None:
    with pytest.raises(ReportQueryError) as raised:
        reports.day_range(day_from, day_to, today=DAY)
    assert raised.value.field == field


def test_three_years_is_the_longest_range() -> None:
    assert reports.day_range("2021-05-01", "2024-04-30", today=DAY)[0] == date(2021, 5, 1)


def test_unknown_report_or_dimension_names_the_field() -> None:
    with pytest.raises(ReportQueryError, match="unknown report") as raised:
        reports.check_report("nope", "all")
    assert raised.value.field == "report"
    with pytest.raises(ReportQueryError) as raised:
        reports.check_report("funnel", "planet")
    assert raised.value.field == "group_by"


# --- goals -----------------------------------------------------------------------------------------------------------

MAY_1, MAY_31 = date(2024, 5, 1), date(2024, 5, 31)


def test_count_goal_expected_by_now_forecast_and_days_left() -> None:
    progress = goals.progress_of("sql", 100, MAY_1, MAY_31, sums={"sql": 40}, today=date(2024, 5, 10))
    assert progress == goals.Progress(
        actual=40.0, progress=0.4, expected_by_now=32.26, forecast=124.0, on_track=True, days_left=21
    )


def test_count_goal_behind_is_not_on_track() -> None:
    progress = goals.progress_of("won", 10, MAY_1, MAY_31, sums={"won": 1}, today=date(2024, 5, 16))
    assert progress.on_track is False and progress.forecast == 1.94 and progress.days_left == 15


def test_revenue_goal_reads_won_amount() -> None:
    sums = {"won_amount": Decimal("12500.50")}
    progress = goals.progress_of("won_revenue", 50000, MAY_1, MAY_31, sums=sums, today=MAY_31)
    assert progress.actual == 12500.5 and progress.progress == 0.25 and progress.forecast == 12500.5
    assert progress.days_left == 0 and progress.expected_by_now == 50000


def test_goal_before_its_period_expects_nothing_yet() -> None:
    assert goals.measured_until(MAY_1, MAY_31, today=date(2024, 4, 1)) is None
    progress = goals.progress_of("captured", 500, MAY_1, MAY_31, sums={}, today=date(2024, 4, 1))
    assert progress == goals.Progress(0.0, 0.0, 0.0, 0.0, on_track=True, days_left=31)


def test_speed_goal_lower_is_better_capped_at_one() -> None:
    slow = {"touch_b9": 10}  # all under 120 s
    progress = goals.progress_of("speed_to_lead_p90", 60, MAY_1, MAY_31, sums=slow, today=date(2024, 5, 10))
    assert progress.actual == 120.0 and progress.progress == 0.5 and progress.on_track is False
    assert progress.forecast == 120.0 and progress.expected_by_now == 60
    fast = goals.progress_of("speed_to_lead_p90", 60, MAY_1, MAY_31, sums={"touch_b3": 5}, today=MAY_31)
    assert fast.progress == 1.0 and fast.on_track is True


def test_speed_goal_without_touched_leads_has_no_value_yet() -> None:
    progress = goals.progress_of("speed_to_lead_p90", 60, MAY_1, MAY_31, sums={}, today=MAY_1)
    assert progress.actual is None and progress.progress is None and progress.on_track is False
