"""feedback's tables, migrations and queries."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback.domain import JourneyStep
from shared.db import Migration, UtcDateTime, create_tables
from shared.tables import INBOX, OUTBOX, add_messaging_tables

metadata = MetaData()
add_messaging_tables(metadata)

timeline = Table(
    "timeline",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("lead_id", String(36), nullable=False),
    Column("step", String(50), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("reason", String(2000), nullable=False),
    Column("details", JSON, nullable=False),
)
Index("ix_timeline_lead", timeline.c.lead_id, timeline.c.occurred_at)

outcomes = Table(
    "outcomes",
    metadata,
    Column("outcome_id", String(36), primary_key=True),
    Column("external_id", String(200), unique=True),
    Column("lead_id", String(36), nullable=False, index=True),
    Column("kind", String(30), nullable=False),
    Column("amount", Numeric(18, 2)),
    Column("currency", String(3)),
    Column("reason", String(1000)),
    Column("competitor", String(200)),
    Column("rep_id", String(64)),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
)

MIGRATIONS = (
    Migration(
        1, "timeline, outcomes, outbox and inbox", create_tables(metadata, "timeline", "outcomes", OUTBOX, INBOX)
    ),
)


async def add_step(session: AsyncSession, *, event_id: str, step: JourneyStep) -> None:
    """Append a step to the lead's journey."""
    await session.execute(timeline.insert().values(event_id=event_id, **asdict(step)))


async def load_journey(session: AsyncSession, *, lead_id: str) -> list[dict[str, Any]]:
    """The lead's steps in the order they happened."""
    statement = select(timeline).where(timeline.c.lead_id == lead_id).order_by(timeline.c.occurred_at, timeline.c.id)
    return [dict(row) for row in (await session.execute(statement)).mappings()]


async def find_outcome_id(session: AsyncSession, *, external_id: str) -> str | None:
    """The outcome already recorded under a sales tool's own event id."""
    return await session.scalar(select(outcomes.c.outcome_id).where(outcomes.c.external_id == external_id))


async def insert_outcome(session: AsyncSession, **values: Any) -> None:
    """Store an outcome."""
    await session.execute(outcomes.insert().values(**values))
