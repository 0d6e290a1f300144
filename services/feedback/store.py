"""feedback's tables, migrations and queries."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    delete,
    func,
    select,
    text,
    update,
)

from services.feedback.aggregates import AMOUNT_METRICS, METRICS, CellSums, Delta, LeadCard, add_amounts, changes
from services.feedback.domain import JourneyStep
from shared import privacy
from shared.db import Migration, UtcDateTime, among, create_tables
from shared.privacy import ERASED_LEADS, add_privacy_tables, scrub
from shared.sessions import DbSession
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.writes import add_to_rows, write_rows

metadata = MetaData()
add_messaging_tables(metadata)

_CARD_FIELDS = tuple(item.name for item in fields(LeadCard))
_STEP_FIELDS = tuple(item.name for item in fields(JourneyStep))
_TIME_FIELDS = tuple(name for name in _CARD_FIELDS if name.endswith("_at") and name != "captured_at")
_TEXT_FIELDS = ("email", "source", "medium", "campaign", "last_campaign", "form", "country", "region", "company_size",
                "industry", "seniority", "competitor", "grade", "verdict", "rep_id", "team", "currency", "lost_reason",
                "lost_to")  # fmt: skip

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

# One card per lead: what reports group by and search filters on (see aggregates.LeadCard).
lead_cards = Table(
    "lead_cards",
    metadata,
    Column("lead_id", String(36), primary_key=True),
    Column("captured_at", UtcDateTime(), nullable=False),
    Column("day", String(10), nullable=False),
    *(Column(name, String(320)) for name in _TEXT_FIELDS),
    Column("interests", JSON, nullable=False),
    Column("score", Integer),
    Column("predicted", Float),
    Column("state", String(20), nullable=False),
    Column("stage", String(20), nullable=False),
    *(Column(name, UtcDateTime()) for name in _TIME_FIELDS),
    Column("won_amount", Numeric(18, 2)),
    Column("recycled", Integer, nullable=False),
    Column("recycled_requalified", Boolean, nullable=False),
    Column("recycled_won", Boolean, nullable=False),
    Column("sla_missed_by", JSON, nullable=False),
    Column("sla_met", Boolean, nullable=False),
)
Index("ix_lead_cards_search", lead_cards.c.captured_at, lead_cards.c.lead_id)
Index("ix_lead_cards_state", lead_cards.c.state, lead_cards.c.captured_at)
Index("ix_lead_cards_rep", lead_cards.c.rep_id, lead_cards.c.captured_at)
Index("ix_lead_cards_campaign", lead_cards.c.campaign, lead_cards.c.captured_at)


def _cells_table(name: str, period: str, width: int) -> Table:
    """Report aggregates: per period (a capture day or month), dimension and value, every metric's running total
    (aggregates.METRICS), indexed for "one dimension over a range of periods"."""
    table = Table(
        name,
        metadata,
        Column(period, String(width), primary_key=True),
        Column("dimension", String(30), primary_key=True),
        Column("value", String(320), primary_key=True),
        *(Column(metric, Numeric(20, 4) if metric in AMOUNT_METRICS else Integer, nullable=False, server_default="0")
          for metric in METRICS),
    )  # fmt: skip
    Index(f"ix_{name}_dimension_{period}", table.c.dimension, table.c[period])
    return table


report_cells = _cells_table("report_cells", "day", 10)
# The same totals per month, so a report over a year reads twelve rows per group instead of 365.
report_cells_monthly = _cells_table("report_cells_monthly", "month", 7)

# Outcomes that arrived before their lead: applied when the lead is captured.
pending_outcomes = Table(
    "pending_outcomes",
    metadata,
    Column("outcome_id", String(36), primary_key=True),
    Column("lead_id", String(36), nullable=False, index=True),
    Column("event", JSON, nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
)

# Targets sales and marketing own together.
goals = Table(
    "goals",
    metadata,
    Column("goal_id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("metric", String(40), nullable=False),
    Column("target", Numeric(20, 4), nullable=False),
    Column("period_start", String(10), nullable=False),
    Column("period_end", String(10), nullable=False),
    Column("dimension", String(30), nullable=False),
    Column("value", String(320), nullable=False),
    Column("owners", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)


def _monthly_rollup(connection: Connection) -> None:
    create_tables(metadata, "report_cells_monthly")(connection)
    connection.execute(text(MONTHLY_ROLLUP_SQL))


# Rebuilds the monthly rollup from the daily cells (a migration, and bulk loads that bypass add_to_cells).
MONTHLY_ROLLUP_SQL = (
    f"INSERT INTO report_cells_monthly (month, dimension, value, {', '.join(METRICS)}) "
    f"SELECT substr(day, 1, 7), dimension, value, {', '.join(f'SUM({name})' for name in METRICS)} "
    "FROM report_cells GROUP BY 1, 2, 3"
)


add_privacy_tables(metadata)

MIGRATIONS = (
    Migration(
        1, "timeline, outcomes, outbox and inbox", create_tables(metadata, "timeline", "outcomes", OUTBOX, INBOX)
    ),
    Migration(
        2,
        "lead cards, report cells, pending outcomes, goals",
        create_tables(metadata, "lead_cards", "report_cells", "pending_outcomes", "goals"),
    ),
    Migration(3, "monthly rollup of the report cells", _monthly_rollup),
    Migration(4, "erased leads", create_tables(metadata, ERASED_LEADS)),
)


# --- cards and aggregates --------------------------------------------------------------------------------------------


def card_values(card: LeadCard) -> dict[str, Any]:
    """A card as column values."""
    # Shallow (dataclasses.asdict deep-copies, a tenth of a millisecond a card): every field is immutable.
    values = {name: getattr(card, name) for name in _CARD_FIELDS}
    values["interests"] = list(card.interests)
    values["sla_missed_by"] = list(card.sla_missed_by)
    values["day"] = card.day
    return values


def card_from_row(row: Mapping[str, Any]) -> LeadCard:
    """A stored card."""
    values = {name: row[name] for name in _CARD_FIELDS}
    values["interests"] = tuple(row["interests"] or ())
    values["sla_missed_by"] = tuple(row["sla_missed_by"] or ())
    return LeadCard(**values)


async def load_card(session: DbSession, *, lead_id: str, for_update: bool = False) -> LeadCard | None:
    """The lead's card, locked for this transaction with `for_update`."""
    query = select(lead_cards).where(lead_cards.c.lead_id == lead_id)
    row = (await session.execute(query.with_for_update() if for_update else query)).mappings().first()
    return card_from_row(dict(row)) if row else None


async def load_cards(session: DbSession, *, lead_ids: Sequence[str]) -> dict[str, LeadCard]:
    """The cards of these leads (those that have one), locked for this transaction, in lead id order so that two
    transactions locking overlapping leads queue instead of deadlocking."""
    if not lead_ids:
        return {}
    rows = await session.execute(_cards_locked(session.get_bind().dialect.name), {"lead_ids": list(lead_ids)})
    return {row["lead_id"]: card_from_row(dict(row)) for row in rows.mappings()}


@functools.cache
def _cards_locked(dialect: str) -> Any:
    among_leads = among(lead_cards.c.lead_id, "lead_ids", dialect)
    return select(lead_cards).where(among_leads).order_by(lead_cards.c.lead_id).with_for_update()


async def save_cards(session: DbSession, *, new: Sequence[LeadCard], changed: Sequence[LeadCard]) -> None:
    """Store many cards with the transaction's other writes (shared.writes): the new ones inserted, so a card another
    transaction made meanwhile fails this one instead of being overwritten; the changed ones, locked by load_cards,
    upserted on their primary key (the report cells are the caller's: see add_changes_to_cells).

    Not an UPDATE: PostgreSQL plans it once per connection, and one prepared while the table was empty kept finding
    the card through ix_lead_cards_search (captured_at, lead_id), reading the whole index for each card (0.3 ms, a
    fifth of a core at 300 leads/s). An upsert finds it through the primary key, whatever the plan."""
    await write_rows(session, lead_cards, [card_values(card) for card in new])
    await write_rows(session, lead_cards, [card_values(card) for card in changed], replace=_CARD_CHANGES)


_CARD_CHANGES = tuple(column.name for column in lead_cards.c if column.name != "lead_id")


async def save_card(session: DbSession, before: LeadCard | None, after: LeadCard) -> None:
    """Store the card and move the report cells by the difference it makes."""
    await save_cards(
        session, new=[after] if before is None else [], changed=[after] if before not in (None, after) else []
    )
    await add_to_cells(session, changes(before, after))


async def add_to_cells(session: DbSession, deltas: Sequence[Delta]) -> None:
    """Add each delta to its daily cell and to the month's rollup (created at zero if new)."""
    sums: CellSums = {}
    for delta in deltas:
        add_amounts(sums, (delta.day, delta.dimension, delta.value), delta.amounts)
    await add_cell_sums(session, sums)


async def add_cell_sums(session: DbSession, sums: CellSums) -> None:
    """Add what a batch's cards add to their daily cells (aggregates.add_change) to those cells and to their months'
    rollups: every distinct cell upserted once (created at zero if new), with the transaction's other writes, in key
    order (two transactions of replicas lock shared cells in one order). The amounts are exact
    (aggregates.stored_amount), so the sums are what adding them one at a time would store."""
    daily: CellSums = {}
    for (day, dimension, value), amounts in sums.items():
        add_amounts(daily, (day, dimension, value[:320]), amounts)
    # The month's cells from the days' sums: a batch's cards share a few days, so far fewer additions.
    monthly: CellSums = {}
    for (day, dimension, value), amounts in daily.items():
        add_amounts(monthly, (day[:7], dimension, value), amounts)
    sqlite = session.bind.dialect.name == "sqlite"
    for table, period, cells in ((report_cells, "day", daily), (report_cells_monthly, "month", monthly)):
        rows = [{period: at, "dimension": dimension, "value": value,
                 **(_sqlite_bound(amounts) if sqlite else _moving(amounts))}
                for (at, dimension, value), amounts in sorted(cells.items())]  # fmt: skip
        await add_to_rows(session, table, rows, add=METRICS)


def _moving(amounts: Mapping[str, Any]) -> dict[str, Any]:
    # Only what moves travels (shared.writes.add_to_rows): a cell's amounts are a few of the 63 metrics.
    return {name: amount for name, amount in amounts.items() if amount != 0}


def _sqlite_bound(amounts: Mapping[str, Any]) -> dict[str, Any]:
    # sqlite3 binds no Decimal; its NUMERIC is a float anyway.
    return {name: float(amount) if isinstance(amount, Decimal) else amount for name, amount in amounts.items()}


async def hold_outcome(
    session: DbSession, *, outcome_id: str, lead_id: str, event: dict[str, Any], at: datetime
) -> None:
    """Keep an outcome whose lead is not known yet."""
    await session.execute(
        pending_outcomes.insert().values(outcome_id=outcome_id, lead_id=lead_id, event=event, received_at=at)
    )


async def hold_outcomes(session: DbSession, *, events: Sequence[Mapping[str, Any]], at: datetime) -> None:
    """Keep many outcomes whose leads are not known yet, with one statement; each is received a microsecond after
    the one before it, so they are taken back in the order they came."""
    if events:
        rows = [
            {"outcome_id": event["outcome_id"], "lead_id": event["lead_id"], "event": dict(event),
             "received_at": at + timedelta(microseconds=number)}
            for number, event in enumerate(events)
        ]  # fmt: skip
        await write_rows(session, pending_outcomes, rows)


async def take_pending_outcomes(session: DbSession, *, lead_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The outcomes waiting for these leads, per lead, oldest first, removed."""
    if not lead_ids:
        return {}
    dialect, given = session.get_bind().dialect.name, {"lead_ids": list(lead_ids)}
    taken: dict[str, list[dict[str, Any]]] = {}
    for lead_id, event in (await session.execute(_pending_for(dialect), given)).all():
        taken.setdefault(lead_id, []).append(event)
    if taken:
        await session.execute(_release_pending(dialect), given)
    return taken


@functools.cache
def _pending_for(dialect: str) -> Any:
    waiting = among(pending_outcomes.c.lead_id, "lead_ids", dialect)
    columns = (pending_outcomes.c.lead_id, pending_outcomes.c.event)
    return select(*columns).where(waiting).order_by(pending_outcomes.c.received_at)


@functools.cache
def _release_pending(dialect: str) -> Any:
    return delete(pending_outcomes).where(among(pending_outcomes.c.lead_id, "lead_ids", dialect))


async def known_leads_with_held_outcomes(session: DbSession, *, held_before: datetime, limit: int) -> list[str]:
    """Leads that have a card and outcomes held since before `held_before` (at most `limit`, oldest hold first).

    A lead's capture takes its held outcomes when it makes the card, so normally none are left. Two replicas can
    leave some: one holds an outcome for a lead it has no card for while the other, not seeing that hold yet, makes
    the card."""
    held_since = func.min(pending_outcomes.c.received_at)
    query = (
        select(pending_outcomes.c.lead_id)
        .join(lead_cards, lead_cards.c.lead_id == pending_outcomes.c.lead_id)
        .where(pending_outcomes.c.received_at < held_before)
        .group_by(pending_outcomes.c.lead_id)
        .order_by(held_since, pending_outcomes.c.lead_id)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def add_step(session: DbSession, *, event_id: str, step: JourneyStep) -> None:
    """Append a step to the lead's journey."""
    await session.execute(timeline.insert().values(event_id=event_id, **asdict(step)))


async def add_steps(session: DbSession, *, steps: Sequence[tuple[str, JourneyStep]]) -> None:
    """Append many (event id, step) pairs to their leads' journeys, in order, with the transaction's other writes."""
    await write_rows(session, timeline, [{"event_id": event_id, **_step_values(step)} for event_id, step in steps])


def _step_values(step: JourneyStep) -> dict[str, Any]:
    return {name: getattr(step, name) for name in _STEP_FIELDS}


async def erased_among(session: DbSession, *, lead_ids: Sequence[str]) -> set[str]:
    """Which of these leads were erased."""
    return await privacy.erased_among(session, metadata, lead_ids=lead_ids)


async def load_journey(session: DbSession, *, lead_id: str) -> list[dict[str, Any]]:
    """The lead's steps in the order they happened."""
    statement = select(timeline).where(timeline.c.lead_id == lead_id).order_by(timeline.c.occurred_at, timeline.c.id)
    return [dict(row) for row in (await session.execute(statement)).mappings()]


async def find_outcome_id(session: DbSession, *, external_id: str) -> str | None:
    """The outcome already recorded under a sales tool's own event id."""
    return await session.scalar(select(outcomes.c.outcome_id).where(outcomes.c.external_id == external_id))


async def insert_outcome(session: DbSession, **values: Any) -> None:
    """Store an outcome."""
    await session.execute(outcomes.insert().values(**values))


async def scrub_journey(session: DbSession, *, lead_id: str, values: Sequence[str]) -> None:
    """Replace personal values in the reasons and details of the lead's journey."""
    if not values:
        return
    rows = (await session.execute(select(timeline.c.id, timeline.c.reason, timeline.c.details).where(
        timeline.c.lead_id == lead_id))).all()  # fmt: skip
    for row_id, reason, details in rows:
        cleaned = {key: scrub(value, values) if isinstance(value, str) else value for key, value in details.items()}
        await session.execute(
            update(timeline).where(timeline.c.id == row_id).values(reason=scrub(reason, values), details=cleaned)
        )
