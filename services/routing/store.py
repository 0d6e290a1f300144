"""routing's tables, migrations and queries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.domain import Rep
from shared.db import Migration, UtcDateTime, create_tables
from shared.tables import INBOX, OUTBOX, add_messaging_tables

DEFAULT_POOL = "default"

metadata = MetaData()
add_messaging_tables(metadata)

reps = Table(
    "reps",
    metadata,
    Column("rep_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

assignments = Table(
    "assignments",
    metadata,
    Column("assignment_id", String(36), primary_key=True),
    Column("lead_id", String(36), nullable=False, unique=True),
    Column("kind", String(20), nullable=False),
    Column("rep_id", String(64)),
    Column("score", Integer, nullable=False),
    Column("reason", String(1000), nullable=False),
    Column("details", JSON, nullable=False),
    Column("decided_at", UtcDateTime(), nullable=False),
)

# One row per pool: whose turn it was last, locked while a lead is assigned so replicas take turns.
rotations = Table(
    "rotations",
    metadata,
    Column("pool", String(64), primary_key=True),
    Column("last_rep_id", String(64)),
)


def _seed_default_pool(connection: Connection) -> None:
    connection.execute(rotations.insert().values(pool=DEFAULT_POOL, last_rep_id=None))


MIGRATIONS = (
    Migration(
        1,
        "reps, assignments, rotations, outbox and inbox",
        create_tables(metadata, "reps", "assignments", "rotations", OUTBOX, INBOX),
    ),
    Migration(2, "default pool", _seed_default_pool),
)


async def insert_rep(
    session: AsyncSession, *, rep_id: str, name: str, email: str, active: bool, created_at: datetime
) -> None:
    """Add a rep."""
    await session.execute(
        reps.insert().values(rep_id=rep_id, name=name, email=email, active=active, created_at=created_at)
    )


async def list_reps(session: AsyncSession) -> list[dict[str, Any]]:
    """Every rep, in id order."""
    return [dict(row) for row in (await session.execute(select(reps).order_by(reps.c.rep_id))).mappings()]


async def load_reps(session: AsyncSession) -> list[Rep]:
    """Every rep as the domain sees them."""
    return [Rep(rep_id=row["rep_id"], name=row["name"], active=row["active"]) for row in await list_reps(session)]


async def lock_rotation(session: AsyncSession, *, pool: str) -> str | None:
    """Take the pool's turn lock (PostgreSQL row lock) and return the rep who was assigned last."""
    statement = select(rotations.c.last_rep_id).where(rotations.c.pool == pool).with_for_update()
    return await session.scalar(statement)


async def advance_rotation(session: AsyncSession, *, pool: str, rep_id: str) -> None:
    """Record the rep who just got a lead from the pool."""
    await session.execute(update(rotations).where(rotations.c.pool == pool).values(last_rep_id=rep_id))


async def assignment_exists(session: AsyncSession, *, lead_id: str) -> bool:
    """True if the lead was already routed."""
    found = await session.scalar(select(assignments.c.assignment_id).where(assignments.c.lead_id == lead_id))
    return found is not None


async def insert_assignment(session: AsyncSession, **values: Any) -> None:
    """Store a routing decision."""
    await session.execute(assignments.insert().values(**values))


async def load_assignment(session: AsyncSession, *, lead_id: str) -> dict[str, Any] | None:
    """The lead's routing decision, or None."""
    row = (await session.execute(select(assignments).where(assignments.c.lead_id == lead_id))).mappings().first()
    return dict(row) if row else None
