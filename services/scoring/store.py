"""scoring's tables, migrations and queries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import Migration, UtcDateTime, create_tables
from shared.tables import INBOX, OUTBOX, add_messaging_tables

metadata = MetaData()
add_messaging_tables(metadata)

scores = Table(
    "scores",
    metadata,
    Column("lead_id", String(36), primary_key=True),
    Column("score", Integer, nullable=False),
    Column("verdict", String(20), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("contributions", JSON, nullable=False),
    Column("scored_at", UtcDateTime(), nullable=False),
)

MIGRATIONS = (Migration(1, "scores, outbox and inbox", create_tables(metadata, "scores", OUTBOX, INBOX)),)


async def save_score(
    session: AsyncSession,
    *,
    lead_id: str,
    score: int,
    verdict: str,
    model_version: str,
    contributions: list[dict[str, Any]],
    scored_at: datetime,
) -> None:
    """Store the lead's current score, replacing the previous one."""
    await session.execute(delete(scores).where(scores.c.lead_id == lead_id))
    await session.execute(
        scores.insert().values(
            lead_id=lead_id,
            score=score,
            verdict=verdict,
            model_version=model_version,
            contributions=contributions,
            scored_at=scored_at,
        )
    )


async def load_score(session: AsyncSession, *, lead_id: str) -> dict[str, Any] | None:
    """The lead's current score, or None."""
    row = (await session.execute(select(scores).where(scores.c.lead_id == lead_id))).mappings().first()
    return dict(row) if row else None
