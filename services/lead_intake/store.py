"""lead_intake's tables, migrations and queries."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import JSON, Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.lead_intake.domain import Lead
from shared.db import Migration, UtcDateTime, create_tables
from shared.tables import INBOX, OUTBOX, add_messaging_tables

metadata = MetaData()
add_messaging_tables(metadata)

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(36), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("first_name", String(200)),
    Column("last_name", String(200)),
    Column("company", String(200)),
    Column("company_domain", String(253)),
    Column("job_title", String(200)),
    Column("phone", String(50)),
    Column("country", String(2)),
    Column("utm_source", String(200)),
    Column("utm_medium", String(200)),
    Column("utm_campaign", String(200)),
    Column("form_id", String(200)),
    Column("attributes", JSON, nullable=False),
    Column("captured_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

MIGRATIONS = (Migration(1, "leads, outbox and inbox", create_tables(metadata, "leads", OUTBOX, INBOX)),)


async def find_lead_id_by_email(session: AsyncSession, *, email: str) -> str | None:
    """The id of the lead with this (normalised) email, if any."""
    return await session.scalar(select(leads.c.lead_id).where(leads.c.email == email))


async def insert_lead(session: AsyncSession, *, lead: Lead) -> None:
    """Store a new lead."""
    values: dict[str, Any] = {**asdict(lead), "updated_at": lead.captured_at}
    await session.execute(leads.insert().values(**values))
