"""Queries over the report cells: sums per group for a dimension and a range of capture days."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback.aggregates import METRICS, LeadCard
from services.feedback.store import card_from_row, goals, lead_cards, report_cells


async def summed_cells(
    session: AsyncSession, *, dimension: str, day_from: str, day_to: str
) -> dict[str, dict[str, Any]]:
    """Every metric summed per value of `dimension` over capture days [day_from, day_to] (ISO dates, inclusive)."""
    columns = [func.sum(report_cells.c[name]).label(name) for name in METRICS]
    query = (
        select(report_cells.c.value, *columns)
        .where(report_cells.c.dimension == dimension, report_cells.c.day >= day_from, report_cells.c.day <= day_to)
        .group_by(report_cells.c.value)
    )
    rows = (await session.execute(query)).mappings()
    return {row["value"]: {name: row[name] or 0 for name in METRICS} for row in rows}


# --- goals and lead search (reports_api, goals_api, search_api) ------------------------------------------------------


async def summed_cell(
    session: AsyncSession, *, dimension: str, value: str, day_from: str, day_to: str
) -> dict[str, Any]:
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


async def insert_goal(session: AsyncSession, **values: Any) -> None:
    """Store a goal."""
    await session.execute(goals.insert().values(**values))


async def load_goals(session: AsyncSession, *, goal_id: str | None = None) -> list[dict[str, Any]]:
    """Every goal (or the one with `goal_id`), oldest first."""
    query = select(goals).order_by(goals.c.created_at, goals.c.goal_id)
    if goal_id is not None:
        query = query.where(goals.c.goal_id == goal_id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def delete_goal(session: AsyncSession, *, goal_id: str) -> bool:
    """Remove a goal; False if there was none."""
    result = await session.execute(delete(goals).where(goals.c.goal_id == goal_id))
    return bool(getattr(result, "rowcount", 0))


async def search_cards(
    session: AsyncSession,
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
