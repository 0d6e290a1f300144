"""lead_intake's tables and migrations, and the queries on leads, their history and held activities."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    exists,
    literal_column,
    null,
    select,
    union_all,
    update,
)

from services.lead_intake.domain import LEAD_FIELDS, Lead, lead_values
from shared.db import (
    Migration,
    UtcDateTime,
    add_columns,
    among,
    column_arrays,
    create_tables,
    unnest_arrays,
    unnest_columns,
)
from shared.privacy import ERASED_LEADS, add_privacy_tables
from shared.sessions import DbSession
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.writes import CheckedWrite, create_unchanged_check, write_checked, write_rows

metadata = MetaData()
add_messaging_tables(metadata)

Text200, Url = String(200), String(2000)

leads = Table(
    "leads",
    metadata,
    Column("lead_id", String(36), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("first_name", Text200),
    Column("last_name", Text200),
    Column("company", Text200),
    Column("company_domain", String(253)),
    Column("job_title", Text200),
    Column("phone", String(50)),
    Column("country", String(2)),
    Column("utm_source", Text200),
    Column("utm_medium", Text200),
    Column("utm_campaign", Text200),
    Column("form_id", Text200),
    Column("attributes", JSON, nullable=False),
    Column("captured_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # version 2: segmentation, source and consent
    Column("seniority", String(20)),
    Column("company_size", String(20)),
    Column("industry", Text200),
    Column("region", Text200),
    Column("city", Text200),
    Column("interests", JSON),
    Column("current_solution", Text200),
    Column("utm_term", Text200),
    Column("utm_content", Text200),
    Column("referrer", Url),
    Column("landing_page", Url),
    Column("consent_marketing", Boolean),
    Column("consent_at", UtcDateTime()),
    Column("consent_wording_version", String(50)),
)
LEAD_COLUMNS_V2 = (
    "seniority", "company_size", "industry", "region", "city", "interests", "current_solution", "utm_term",
    "utm_content", "referrer", "landing_page", "consent_marketing", "consent_at", "consent_wording_version",
)  # fmt: skip

lead_history = Table(
    "lead_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("lead_id", String(36), nullable=False, index=True),
    Column("changed_at", UtcDateTime(), nullable=False),
    Column("source", Text200, nullable=False),
    Column("changes", JSON, nullable=False),
)

forms = Table(
    "forms",
    metadata,
    Column("form_id", String(100), primary_key=True),
    Column("name", Text200, nullable=False),
    Column("allowed_origins", JSON, nullable=False),
    Column("redirect_urls", JSON, nullable=False),
    Column("requires_consent", Boolean, nullable=False),
    Column("honeypot_field", String(100), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("name", Text200, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("allowed_origins", JSON, nullable=False),
    Column("allowed_forms", JSON, nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime()),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("response_status", Integer),
    Column("response_body", LargeBinary),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False, index=True),
)

held_activities = Table(
    "held_activities",
    metadata,
    Column("activity_id", String(36), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("kind", String(100), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("url", Url),
    Column("title", Text200),
    Column("properties", JSON, nullable=False),
)
Index("ix_held_activities_email", held_activities.c.email)

add_privacy_tables(metadata)

MIGRATIONS = (
    Migration(1, "leads, outbox and inbox", create_tables(metadata, "leads", OUTBOX, INBOX)),
    Migration(2, "lead segmentation, source and consent", add_columns(metadata, "leads", *LEAD_COLUMNS_V2)),
    Migration(
        3,
        "lead history, forms, API keys, idempotency keys, held activities",
        create_tables(metadata, "lead_history", "forms", "api_keys", "idempotency_keys", "held_activities"),
    ),
    Migration(4, "erased leads", create_tables(metadata, ERASED_LEADS)),
    Migration(5, "the check of compare-and-set writes", create_unchanged_check),
)

_DIALECTS = ("postgresql", "sqlite")


def _lead_of(row: Any) -> Lead:
    values = {name: row[name] for name in LEAD_FIELDS}
    values["interests"] = tuple(values["interests"] or ())
    values["attributes"] = dict(values["attributes"] or {})
    return Lead(**values)


def _row_of(lead: Lead) -> dict[str, Any]:
    values = lead_values(lead)
    values["interests"] = list(lead.interests)
    return values


async def find_lead_by_email(session: DbSession, *, email: str) -> Lead | None:
    """The lead with this (normalised) email, if any."""
    row = (await session.execute(select(leads).where(leads.c.email == email))).mappings().first()
    return _lead_of(row) if row else None


# Built once per dialect: a statement reused across requests also keeps its SQL cache key.
_LEADS_BY_EMAIL = {dialect: select(leads).where(among(leads.c.email, "emails", dialect)) for dialect in _DIALECTS}
_LEADS_NOTING_HELD = {
    dialect: union_all(
        select(leads, literal_column("0").label("held_waiting")).where(among(leads.c.email, "emails", dialect)),
        select(*(null() for _ in leads.c), literal_column("1")).where(
            exists().where(among(held_activities.c.email, "emails", dialect))
        ),
    )
    for dialect in _DIALECTS
}
_HELD_FOR_EMAILS = {
    dialect: select(held_activities)
    .where(among(held_activities.c.email, "emails", dialect))
    .order_by(held_activities.c.occurred_at)
    for dialect in _DIALECTS
}
_RELEASE_HELD = {
    dialect: delete(held_activities).where(among(held_activities.c.email, "emails", dialect)) for dialect in _DIALECTS
}


def _dialect(session: DbSession) -> str:
    return "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"


async def find_leads_by_email(session: DbSession, *, emails: list[str]) -> dict[str, Lead]:
    """The known leads among `emails`, by email."""
    rows = (await session.execute(_LEADS_BY_EMAIL[_dialect(session)], {"emails": emails})).mappings()
    return {row["email"]: _lead_of(row) for row in rows}


async def find_leads_noting_held(session: DbSession, *, emails: list[str]) -> tuple[dict[str, Lead], bool]:
    """`find_leads_by_email`, and whether any activity is held for one of `emails`, in one round trip (a batch
    whose emails have none, nearly all, need not take any)."""
    found, held = {}, False
    for row in (await session.execute(_LEADS_NOTING_HELD[_dialect(session)], {"emails": emails})).mappings():
        if row["held_waiting"]:
            held = True
        else:
            found[row["email"]] = _lead_of(row)
    return found, held


async def lead_exists(session: DbSession, *, lead_id: str) -> str | None:
    """The email of the lead with this id, if it exists."""
    return await session.scalar(select(leads.c.email).where(leads.c.lead_id == lead_id))


async def load_lead(session: DbSession, *, lead_id: str) -> Lead | None:
    """The lead with this id, if any."""
    row = (await session.execute(select(leads).where(leads.c.lead_id == lead_id))).mappings().first()
    return _lead_of(row) if row else None


async def insert_leads(session: DbSession, *, new_leads: list[Lead]) -> None:
    """Store new leads with one statement (sent with the transaction's other writes: shared.writes)."""
    await write_rows(session, leads, [{**_row_of(lead), "updated_at": lead.captured_at} for lead in new_leads])


async def insert_unknown_leads(session: DbSession, *, new_leads: list[Lead]) -> None:
    """`insert_leads` for leads whose emails were not looked up, as a checked write (shared.writes): an email
    stored already fails it as ever (unique), and so does one with activities held for it (IntegrityError either
    way, nothing written); the caller then captures the batch again, reading first. PostgreSQL only."""
    rows = [{**_row_of(lead), "updated_at": lead.captured_at} for lead in new_leads]
    if rows:
        columns = tuple(rows[0])
        await write_checked(session, _insert_unheld(columns), column_arrays(leads, rows, columns))


@functools.lru_cache(maxsize=8)
def _insert_unheld(columns: tuple[str, ...]) -> CheckedWrite:
    names = ", ".join(columns)
    return CheckedWrite(
        leads,
        f"INSERT INTO leads ({names}) SELECT {', '.join(unnest_columns(leads, columns))} "
        f"FROM unnest({unnest_arrays(leads, columns, prefix='{p}')}) WITH ORDINALITY AS given({names}, position) "
        "WHERE NOT EXISTS (SELECT 1 FROM held_activities WHERE held_activities.email = given.email) "
        "ORDER BY position",
    )


async def update_lead(session: DbSession, *, lead: Lead, changed: list[str], at: datetime) -> None:
    """Store the changed fields of a merged lead."""
    values = {name: value for name, value in _row_of(lead).items() if name in changed}
    await session.execute(update(leads).where(leads.c.lead_id == lead.lead_id).values(**values, updated_at=at))


async def add_history(session: DbSession, *, entries: list[dict[str, Any]]) -> None:
    """Keep what resubmissions changed: rows of lead_id, changed_at, source, changes."""
    await write_rows(session, lead_history, entries)


async def load_history(session: DbSession, *, lead_id: str) -> list[dict[str, Any]]:
    """Every change of a lead, oldest first."""
    query = select(lead_history).where(lead_history.c.lead_id == lead_id).order_by(lead_history.c.id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def hold_activity(session: DbSession, **values: Any) -> None:
    """Keep an activity of an unknown email until a lead with that email arrives."""
    await session.execute(held_activities.insert().values(**values))


async def take_held_activities(session: DbSession, *, emails: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Remove and return the activities held for these emails, oldest first, by email."""
    if not emails:
        return {}
    dialect = _dialect(session)
    held: dict[str, list[dict[str, Any]]] = {}
    for row in (await session.execute(_HELD_FOR_EMAILS[dialect], {"emails": emails})).mappings():
        held.setdefault(row["email"], []).append(dict(row))
    if held:
        await session.execute(_RELEASE_HELD[dialect], {"emails": list(held)})
    return held


async def erase_lead(session: DbSession, *, lead_id: str, personal: Sequence[str]) -> str | None:
    """Remove the lead's personal data, keep the rest; returns the erased email, or None if there is no lead."""
    email = await session.scalar(select(leads.c.email).where(leads.c.lead_id == lead_id))
    if email is None:
        return None
    cleared = {name: None for name in personal if name in leads.c and name not in ("email", "attributes")}
    # The email is the dedupe key (unique, required): it becomes a placeholder no submission can match.
    await session.execute(
        update(leads)
        .where(leads.c.lead_id == lead_id)
        .values(email=f"erased+{lead_id}@erased.invalid", attributes={}, **cleared)
    )
    await session.execute(delete(lead_history).where(lead_history.c.lead_id == lead_id))
    await session.execute(delete(held_activities).where(held_activities.c.email == email))
    return str(email)
