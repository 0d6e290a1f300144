"""Queries over the report cells: sums per group for a dimension and a range of capture days."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select

from services.feedback.aggregates import METRICS, LeadCard
from services.feedback.store import card_from_row, goals, lead_cards, report_cells, report_cells_monthly
from shared.sessions import DbSession


async def summed_cells(session: DbSession, *, dimension: str, day_from: str, day_to: str) -> dict[str, dict[str, Any]]:
    """Every metric summed per value of `dimension` over capture days [day_from, day_to] (ISO dates, inclusive):
    whole months from the monthly rollup, the days at either end from the daily cells."""
    months, edges = split_range(date.fromisoformat(day_from), date.fromisoformat(day_to))
    totals: dict[str, dict[str, Any]] = {}
    if months:
        monthly = report_cells_monthly
        query = select(monthly.c.value, *(func.sum(monthly.c[name]).label(name) for name in METRICS)).where(
            monthly.c.dimension == dimension, monthly.c.month.in_(months)
        )
        _add_rows(totals, (await session.execute(query.group_by(monthly.c.value))).mappings())
    if edges:
        daily = report_cells
        in_edges = or_(*(and_(daily.c.day >= low, daily.c.day <= high) for low, high in edges))
        query = select(daily.c.value, *(func.sum(daily.c[name]).label(name) for name in METRICS)).where(
            daily.c.dimension == dimension, in_edges
        )
        _add_rows(totals, (await session.execute(query.group_by(daily.c.value))).mappings())
    return totals


def split_range(first: date, last: date) -> tuple[list[str], list[tuple[str, str]]]:
    """[first, last] as the whole months inside it ('YYYY-MM') and the day ranges left at either end."""
    months: list[str] = []
    edges: list[tuple[str, str]] = []
    cursor = first
    while cursor <= last:
        month_end = (cursor.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        if cursor.day == 1 and month_end <= last:
            months.append(cursor.isoformat()[:7])
        else:
            edges.append((cursor.isoformat(), min(month_end, last).isoformat()))
        cursor = month_end + timedelta(days=1)
    return months, edges


def _add_rows(totals: dict[str, dict[str, Any]], rows: Iterable[Any]) -> None:
    for row in rows:
        sums = totals.setdefault(row["value"], dict.fromkeys(METRICS, 0))
        for name in METRICS:
            sums[name] += row[name] or 0


# --- goals and lead search (reports_api, goals_api, search_api) ------------------------------------------------------


async def summed_cell(session: DbSession, *, dimension: str, value: str, day_from: str, day_to: str) -> dict[str, Any]:
    """Every metric of one (dimension, value) summed over capture days [day_from, day_to] (zeros without data)."""
    columns = [func.sum(report_cells.c[name]).label(name) for name in METRICS]
    query = select(*columns).where(
        report_cells.c.dimension == dimension,
        report_cells.c.value == value,
        report_cells.c.day >= day_from,
        report_cells.c.day <= day_to,
    )
    row = (await session.execute(query)).mappings().one()
    return {name: row[name] or 0 for name in METRICS}


async def insert_goal(session: DbSession, **values: Any) -> None:
    """Store a goal."""
    await session.execute(goals.insert().values(**values))


async def load_goals(session: DbSession, *, goal_id: str | None = None) -> list[dict[str, Any]]:
    """Every goal (or the one with `goal_id`), oldest first."""
    query = select(goals).order_by(goals.c.created_at, goals.c.goal_id)
    if goal_id is not None:
        query = query.where(goals.c.goal_id == goal_id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def delete_goal(session: DbSession, *, goal_id: str) -> bool:
    """Remove a goal; False if there was none."""
    result = await session.execute(delete(goals).where(goals.c.goal_id == goal_id))
    return bool(getattr(result, "rowcount", 0))


async def search_cards(
    session: DbSession,
    *,
    equals: Mapping[str, str],
    captured_from: datetime | None,
    captured_before: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[LeadCard]:
    """Cards matching `equals` (column -> value), newest capture first, strictly after the keyset `after`."""
    query = select(lead_cards).where(*(lead_cards.c[name] == value for name, value in equals.items()))
    if captured_from is not None:
        query = query.where(lead_cards.c.captured_at >= captured_from)
    if captured_before is not None:
        query = query.where(lead_cards.c.captured_at < captured_before)
    if after is not None:
        at, lead_id = after
        query = query.where(
            or_(lead_cards.c.captured_at < at, and_(lead_cards.c.captured_at == at, lead_cards.c.lead_id < lead_id))
        )
    query = query.order_by(lead_cards.c.captured_at.desc(), lead_cards.c.lead_id.desc()).limit(limit)
    return [card_from_row(dict(row)) for row in (await session.execute(query)).mappings()]
