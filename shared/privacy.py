"""Personal data: which lead fields identify a person, how to strip them, and the erased-leads tombstone.

An erasure keeps what marketing needs in aggregate (country, segment, source, campaign, score, outcomes) and
removes what identifies the person. Each service records the erased lead id, so an event about that lead arriving
late (topics are not ordered with each other) is stripped before it is stored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, MetaData, Select, String, Table, select

from shared.db import UtcDateTime, among
from shared.envelope import utc_now
from shared.sessions import DbSession

ERASED_LEADS = "erased_leads"
# Fields of a lead (LeadCapturedV1 and copies of it in other services) that identify a person.
PERSONAL_FIELDS = frozenset(
    {"email", "first_name", "last_name", "phone", "job_title", "city", "referrer", "landing_page", "attributes"}
)
ERASED = "[erased]"


def add_privacy_tables(metadata: MetaData) -> None:
    """Declare the erased-leads tombstone in a service's metadata."""
    Table(
        ERASED_LEADS,
        metadata,
        Column("lead_id", String(36), primary_key=True),
        Column("erased_at", UtcDateTime(), nullable=False),
    )


def strip_personal(lead: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a lead mapping without its personal fields (nested `lead` snapshots included)."""
    kept = {key: value for key, value in lead.items() if key not in PERSONAL_FIELDS}
    if isinstance(kept.get("lead"), Mapping):
        kept["lead"] = strip_personal(kept["lead"])
    if isinstance(kept.get("data"), Mapping):  # a CloudEvent in structured form
        kept["data"] = strip_personal(kept["data"])
    return kept


def personal_values(lead: Mapping[str, Any]) -> list[str]:
    """The personal values of a lead as text (to scrub them from free-text reasons)."""
    values = [str(lead[key]) for key in PERSONAL_FIELDS if key != "attributes" and lead.get(key)]
    return [value for value in values if len(value) >= 3]


def scrub(text: str, values: Iterable[str]) -> str:
    """`text` with every personal value replaced."""
    for value in values:
        text = text.replace(value, ERASED)
    return text


async def mark_erased(session: DbSession, metadata: MetaData, *, lead_id: str) -> bool:
    """Record the tombstone; False if the lead was already erased here."""
    table = metadata.tables[ERASED_LEADS]
    if await session.scalar(select(table.c.lead_id).where(table.c.lead_id == lead_id)) is not None:
        return False
    await session.execute(table.insert().values(lead_id=lead_id, erased_at=utc_now()))
    return True


@functools.cache
def _erased_among(table: Table, dialect: str) -> Select[tuple[str]]:
    # Built once per service: building a statement takes about half the CPU of running it.
    return select(table.c.lead_id).where(among(table.c.lead_id, "lead_ids", dialect))


async def erased_among(session: DbSession, metadata: MetaData, *, lead_ids: Sequence[str]) -> set[str]:
    """Which of `lead_ids` were erased (so anything personal about them must not be stored)."""
    if not lead_ids:
        return set()
    query = _erased_among(metadata.tables[ERASED_LEADS], session.get_bind().dialect.name)
    return set((await session.scalars(query, {"lead_ids": list(lead_ids)})).all())


async def is_erased(session: DbSession, metadata: MetaData, *, lead_id: str) -> bool:
    """True if the lead was erased (so anything personal about it must not be stored)."""
    table = metadata.tables[ERASED_LEADS]
    return await session.scalar(select(table.c.lead_id).where(table.c.lead_id == lead_id)) is not None


async def forget_sent_events(session: DbSession, metadata: MetaData, *, lead_id: str) -> None:
    """Delete the lead's outbox rows already published (their payloads carry personal data)."""
    outbox = metadata.tables["outbox"]
    await session.execute(
        outbox.delete().where(outbox.c.message_key == lead_id.encode(), outbox.c.sent_at.is_not(None))
    )
