"""routing's tables, migrations and queries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    CompoundSelect,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)

from services.routing.reps import Absence, Load, Rep, WorkingHours, parse_week
from shared.db import Migration, UtcDateTime, add_columns, among, create_tables, few_enough, json_text
from shared.privacy import ERASED_LEADS, add_privacy_tables, strip_personal
from shared.sessions import DbSession
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.writes import CheckedWrite, create_unchanged_check, update_rows, write_checked, write_rows

POSTGRES = "postgresql"
# The dialects statements are built for: PostgreSQL's take lists as arrays (shared.db.among), the others IN lists.
_DIALECTS = ("sqlite", POSTGRES)


def _dialect(session: DbSession) -> str:
    return POSTGRES if session.get_bind().dialect.name == POSTGRES else "sqlite"


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
    Column("team", String(64)),
    Column("manager", String(320)),
    Column("languages", JSON),
    Column("skills", JSON),
    Column("territories", JSON),
    Column("segments", JSON),
    Column("weight", Integer),
    Column("max_open", Integer),
    Column("max_per_day", Integer),
    Column("timezone", String(64)),
    Column("working_hours", JSON),
    Column("out_of_office", JSON),
    Column("updated_at", UtcDateTime()),
)

# What each rep carries, changed only by compare-and-increment so that concurrent assignments never pass a cap.
rep_loads = Table(
    "rep_loads",
    metadata,
    Column("rep_id", String(64), primary_key=True),
    Column("open_leads", Integer, nullable=False),
    Column("day", String(10)),
    Column("new_on_day", Integer, nullable=False),
    Column("sla_misses", Integer, nullable=False),
)

teams = Table(
    "teams",
    metadata,
    Column("team_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("manager", String(320)),
    Column("created_at", UtcDateTime(), nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("rep_id", String(64), nullable=False),
    Column("name", String(200)),
    Column("created_at", UtcDateTime(), nullable=False),
)

policies = Table(
    "routing_policies",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("activated_at", UtcDateTime()),
    Column("active", Boolean, nullable=False),
)

# The lead's routing state: one row per lead. `status`: queued | assigned | accepted | closed.
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
    Column("status", String(20)),
    Column("pool", String(300)),
    Column("rule", String(64)),
    Column("grade", String(4)),
    Column("verdict", String(20)),
    Column("sla_deadline", UtcDateTime()),
    Column("lead", JSON),
    Column("tried", JSON),
    Column("updated_at", UtcDateTime()),
)
SLA_INDEX = Index("ix_assignments_sla", assignments.c.status, assignments.c.sla_deadline)

# Every decision ever taken on a lead, in order: the assignment's explanation over time.
decisions = Table(
    "routing_decisions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("lead_id", String(36), nullable=False, index=True),
    Column("assignment_id", String(36), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("rep_id", String(64)),
    Column("reason", String(1000), nullable=False),
    Column("details", JSON, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

# One row per pool: locked while a lead of that pool is assigned, so replicas take turns; `weights` holds the
# smooth weighted round robin's running totals per rep.
rotations = Table(
    "rotations",
    metadata,
    Column("pool", String(300), primary_key=True),
    Column("last_rep_id", String(64)),
    Column("weights", JSON),
)

# --- delivery to sales tools: webhook subscriptions, their deliveries (an outbox of HTTP calls), the live stream ---

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=False),  # "whsec_" + base64, per the Standard Webhooks spec
    Column("team", String(64)),  # only leads of this team (None: every team)
    Column("rep_id", String(64)),  # only leads of this rep (None: every rep)
    Column("kinds", JSON, nullable=False),  # leads.routed kinds to deliver; [] = all
    Column("active", Boolean, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# Written in the same transaction as the routing decision; a dispatcher sends them, retrying with backoff for
# up to 24 h, then parks them (status "parked") until redelivered.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", String(64), primary_key=True),  # the webhook-id header
    Column("subscription_id", String(64), nullable=False),
    Column("lead_id", String(36), nullable=False),
    Column("event", JSON, nullable=False),  # the CloudEvent in structured JSON form
    Column("status", String(20), nullable=False),  # pending | delivered | parked
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("last_error", String(2000)),
    Column("last_status_code", Integer),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime()),
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at)

# What the live stream (Server-Sent Events) replays: `seq` is the SSE event id a client resumes from.
stream_events = Table(
    "stream_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("lead_id", String(36), nullable=False),
    Column("rep_id", String(64)),
    Column("team", String(64)),
    Column("event", JSON, nullable=False),  # the CloudEvent in structured JSON form
    Column("at", UtcDateTime(), nullable=False),
)


add_privacy_tables(metadata)


def _seed_default_pool(connection: Connection) -> None:
    connection.execute(rotations.insert().values(pool=DEFAULT_POOL, last_rep_id=None))


def _backfill(connection: Connection) -> None:
    connection.execute(update(assignments).where(assignments.c.status.is_(None)).values(
        status=case((assignments.c.kind == "assigned", "assigned"), else_="queued"), pool=DEFAULT_POOL))  # fmt: skip
    connection.execute(update(reps).where(reps.c.weight.is_(None)).values(weight=1, timezone="UTC"))
    carried: dict[str, int] = dict(
        connection.execute(  # type: ignore[arg-type]
            select(assignments.c.rep_id, func.count())
            .where(assignments.c.status == "assigned")
            .group_by(assignments.c.rep_id)
        ).all()
    )
    for (rep_id,) in connection.execute(select(reps.c.rep_id)).all():
        connection.execute(
            rep_loads.insert().values(rep_id=rep_id, open_leads=carried.get(rep_id, 0), new_on_day=0, sla_misses=0)
        )


def _migration_3(connection: Connection) -> None:
    add_columns(metadata, "reps", *(column.name for column in reps.columns if column.name not in _V1_REPS))(connection)
    add_columns(metadata, "assignments", *(c.name for c in assignments.columns if c.name not in _V1_ASSIGNMENTS))(
        connection
    )
    add_columns(metadata, "rotations", "weights")(connection)
    create_tables(metadata, "rep_loads", "teams", "accounts", "routing_policies", "routing_decisions")(connection)
    SLA_INDEX.create(connection, checkfirst=True)
    _backfill(connection)


_V1_REPS = {"rep_id", "name", "email", "active", "created_at"}
_V1_ASSIGNMENTS = {"assignment_id", "lead_id", "kind", "rep_id", "score", "reason", "details", "decided_at"}


def _create_add_to_turns(connection: Connection) -> None:
    """Migration step (PostgreSQL): `add_to_turns(totals, changes)`, each rep's total plus its change (a rep missing
    from either counts 0; totals that are not an object count as none). A function rather than the same in SQL
    within the statement: PostgreSQL plans that anew at every execution (its arrays), and planning json_each_text,
    a union and an aggregate took twice the server's CPU of the statement it replaced; a function's plan is kept."""
    if connection.dialect.name != "postgresql":
        return
    connection.execute(
        text("""
        CREATE FUNCTION add_to_turns(totals json, changes json) RETURNS json LANGUAGE plpgsql IMMUTABLE AS $$
        DECLARE
            merged jsonb := CASE WHEN json_typeof(totals) = 'object' THEN totals::jsonb ELSE '{}'::jsonb END;
            change record;
        BEGIN
            FOR change IN SELECT key, value FROM json_each_text(changes) LOOP
                merged := merged || jsonb_build_object(
                    change.key, coalesce((merged ->> change.key)::integer, 0) + change.value::integer
                );
            END LOOP;
            RETURN merged::json;
        END
        $$
    """)
    )


MIGRATIONS = (
    Migration(
        1,
        "reps, assignments, rotations, outbox and inbox",
        create_tables(metadata, "reps", "assignments", "rotations", OUTBOX, INBOX),
    ),
    Migration(2, "default pool", _seed_default_pool),
    Migration(3, "teams, accounts, policies, rep profiles and loads, lead routing state", _migration_3),
    Migration(
        4,
        "webhook subscriptions and deliveries, live stream",
        create_tables(metadata, "webhook_subscriptions", "webhook_deliveries", "stream_events"),
    ),
    Migration(5, "erased leads", create_tables(metadata, ERASED_LEADS)),
    Migration(6, "the check of compare-and-set writes", create_unchanged_check),
    Migration(7, "the function adding a run's turns to a pool's totals", _create_add_to_turns),
)


# --- reps ---------------------------------------------------------------------------------------------------------


async def upsert_rep(session: DbSession, *, rep_id: str, values: dict[str, Any], now: datetime) -> bool:
    """Create or replace a rep's profile; True if it was created. Its load row is created with it."""
    exists = await session.scalar(select(reps.c.rep_id).where(reps.c.rep_id == rep_id))
    if exists is None:
        await session.execute(reps.insert().values(rep_id=rep_id, created_at=now, updated_at=now, **values))
        await session.execute(rep_loads.insert().values(rep_id=rep_id, open_leads=0, new_on_day=0, sla_misses=0))
        return True
    await session.execute(update(reps).where(reps.c.rep_id == rep_id).values(updated_at=now, **values))
    return False


async def list_reps(session: DbSession, *, team: str | None = None) -> list[dict[str, Any]]:
    """Every rep (of `team`), in id order, with their load."""
    query = _REPS_WITH_LOADS if team is None else _REPS_WITH_LOADS.where(reps.c.team == team)
    return [dict(row) for row in (await session.execute(query)).mappings()]


_REPS_WITH_LOADS = (
    select(reps, rep_loads.c.open_leads, rep_loads.c.day, rep_loads.c.new_on_day, rep_loads.c.sla_misses)
    .join(rep_loads, rep_loads.c.rep_id == reps.c.rep_id, isouter=True)
    .order_by(reps.c.rep_id)
)


async def load_rep_row(session: DbSession, *, rep_id: str) -> dict[str, Any] | None:
    """One rep with their load, or None."""
    rows = [row for row in await list_reps(session) if row["rep_id"] == rep_id]
    return rows[0] if rows else None


async def delete_rep(session: DbSession, *, rep_id: str) -> bool:
    """Remove a rep (their assignments stay, as history); True if there was one."""
    result = await session.execute(delete(reps).where(reps.c.rep_id == rep_id))
    await session.execute(delete(rep_loads).where(rep_loads.c.rep_id == rep_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def rep_from_row(row: dict[str, Any]) -> Rep:
    """The domain's view of a stored rep."""
    timezone = row.get("timezone") or "UTC"
    hours = None
    if row.get("working_hours"):
        hours = WorkingHours(timezone, parse_week(row["working_hours"]))
    absences = tuple(
        Absence(datetime.fromisoformat(item["start"]), datetime.fromisoformat(item["end"]))
        for item in row.get("out_of_office") or []
    )
    return Rep(
        rep_id=row["rep_id"],
        name=row["name"],
        email=row["email"],
        team=row.get("team"),
        manager=row.get("manager"),
        languages=frozenset(row.get("languages") or ()),
        skills=frozenset(row.get("skills") or ()),
        territories=frozenset(row.get("territories") or ()),
        segments=frozenset(row.get("segments") or ()),
        weight=row.get("weight") or 1,
        max_open=row.get("max_open"),
        max_per_day=row.get("max_per_day"),
        timezone=timezone,
        hours=hours,
        absences=absences,
        active=row["active"],
    )


def load_from_row(row: dict[str, Any]) -> Load:
    """The load stored with a rep row."""
    day = row.get("day")
    return Load(
        open_leads=row.get("open_leads") or 0,
        day=date.fromisoformat(day) if day else None,
        new_on_day=row.get("new_on_day") or 0,
    )


async def load_roster(session: DbSession) -> tuple[list[Rep], dict[str, Load]]:
    """Every rep and their load, as the domain sees them."""
    rows = await list_reps(session)
    return [rep_from_row(row) for row in rows], {row["rep_id"]: load_from_row(row) for row in rows}


async def claim_capacity(session: DbSession, rep: Rep, *, today: date, count: int = 1) -> bool:
    """Count `count` more open (and today's new) leads for `rep` unless that passes a cap: compare-and-increment,
    so two replicas assigning at once can never both take the last slot. False (nothing counted) if it would."""
    parameters = {
        "claimed_rep_id": rep.rep_id, "claimed": count, "today": today.isoformat(), "max_open": rep.max_open,
        "max_per_day": rep.max_per_day,
        # a new day's first lead always counts, as one claim at a time would
        "first_fits": rep.max_per_day is not None and count <= max(rep.max_per_day, 1),
    }  # fmt: skip
    result = await session.execute(_CLAIM_CAPACITY, parameters)
    return bool(result.rowcount)  # type: ignore[attr-defined]


# One statement for every rep (a cap not set is a NULL parameter), built and compiled once: building it per claim
# cost more CPU than running it.
_claimed, _today = bindparam("claimed", type_=Integer), bindparam("today", type_=String)
_max_open, _max_per_day = bindparam("max_open", type_=Integer), bindparam("max_per_day", type_=Integer)
_CLAIM_CAPACITY = (
    update(rep_loads)
    .where(
        rep_loads.c.rep_id == bindparam("claimed_rep_id", type_=String),
        or_(_max_open.is_(None), rep_loads.c.open_leads <= _max_open - _claimed),
        or_(
            _max_per_day.is_(None),
            and_(bindparam("first_fits", type_=Boolean), or_(rep_loads.c.day.is_(None), rep_loads.c.day != _today)),
            and_(rep_loads.c.day == _today, rep_loads.c.new_on_day <= _max_per_day - _claimed),
        ),
    )
    .values(
        open_leads=rep_loads.c.open_leads + _claimed,
        new_on_day=case((rep_loads.c.day == _today, rep_loads.c.new_on_day + _claimed), else_=_claimed),
        day=_today,
    )
)


async def claim_capacities_checked(session: DbSession, claims: Sequence[tuple[Rep, date, int]]) -> None:
    """`claim_capacity` for each (rep, their today, leads) at once, kept with the transaction's other writes as a
    checked write (shared.writes): if any rep no longer has room, the statement sending it fails (IntegrityError)
    and nothing is counted. For capacity chosen on loads read without locks."""
    ordered = sorted(claims, key=lambda claim: claim[0].rep_id)
    await write_checked(session, _CLAIM_CAPACITIES, {
        "rep_id": [rep.rep_id for rep, _, _ in ordered], "claimed": [count for _, _, count in ordered],
        "today": [today.isoformat() for _, today, _ in ordered], "max_open": [rep.max_open for rep, _, _ in ordered],
        "max_per_day": [rep.max_per_day for rep, _, _ in ordered],
        "first_fits": [rep.max_per_day is not None and count <= max(rep.max_per_day, 1) for rep, _, count in ordered],
    })  # fmt: skip


# `_CLAIM_CAPACITY`'s compare-and-increment, for many reps in one statement.
_CLAIM_CAPACITIES = CheckedWrite(
    rep_loads,
    "UPDATE rep_loads SET open_leads = rep_loads.open_leads + claim.claimed, "
    "new_on_day = CASE WHEN rep_loads.day = claim.today THEN rep_loads.new_on_day + claim.claimed "
    "ELSE claim.claimed END, day = claim.today "
    "FROM unnest(CAST(:{p}rep_id AS varchar[]), CAST(:{p}claimed AS integer[]), CAST(:{p}today AS varchar[]), "
    "CAST(:{p}max_open AS integer[]), CAST(:{p}max_per_day AS integer[]), CAST(:{p}first_fits AS boolean[])) "
    "AS claim(rep_id, claimed, today, max_open, max_per_day, first_fits) "
    "WHERE rep_loads.rep_id = claim.rep_id "
    "AND (claim.max_open IS NULL OR rep_loads.open_leads <= claim.max_open - claim.claimed) "
    "AND (claim.max_per_day IS NULL "
    "OR (claim.first_fits AND (rep_loads.day IS NULL OR rep_loads.day <> claim.today)) "
    "OR (rep_loads.day = claim.today AND rep_loads.new_on_day <= claim.max_per_day - claim.claimed))",
)


async def count_claims(session: DbSession, claims: Sequence[tuple[str, date, int, Load]]) -> None:
    """Count each (rep id, their today, leads, their load as `lock_loads` found it) claim on the rep's load row, with
    one statement sent with the transaction's other writes. Only for load rows `lock_loads` locked and found with
    room: the new values are worked out from the locked ones, and no cap is checked."""
    counted = [(rep_id, load.with_new_leads(today, count)) for rep_id, today, count, load in claims]
    rows = [
        {"rep_id": rep_id, "open_leads": new.open_leads, "day": new.day.isoformat() if new.day else None,
         "new_on_day": new.new_on_day}
        for rep_id, new in counted
    ]  # fmt: skip
    await update_rows(session, rep_loads, rows, key=("rep_id",))


async def lock_loads(session: DbSession, *, rep_ids: Sequence[str]) -> dict[str, Load]:
    """The current loads of these reps, their rows locked to commit (in rep id order, as every path takes them), so
    the capacity they have left cannot change before it is claimed. A rep without a load row is absent."""
    rows = await session.execute(_LOCK_LOADS[_dialect(session)], {"rep_ids": list(rep_ids)})
    return {row["rep_id"]: load_from_row(dict(row)) for row in rows.mappings()}


_LOCK_LOADS = {
    dialect: select(rep_loads).where(among(rep_loads.c.rep_id, "rep_ids", dialect)).order_by(rep_loads.c.rep_id)
    .with_for_update()
    for dialect in _DIALECTS
}  # fmt: skip


async def release_capacity(session: DbSession, *, rep_id: str) -> None:
    """One open lead fewer for `rep_id` (never below zero)."""
    await session.execute(
        update(rep_loads)
        .where(rep_loads.c.rep_id == rep_id, rep_loads.c.open_leads > 0)
        .values(open_leads=rep_loads.c.open_leads - 1)
    )


async def count_miss(session: DbSession, *, rep_id: str) -> int:
    """Record an SLA miss for `rep_id`; returns their misses so far."""
    await session.execute(
        update(rep_loads).where(rep_loads.c.rep_id == rep_id).values(sla_misses=rep_loads.c.sla_misses + 1)
    )
    return int(await session.scalar(select(rep_loads.c.sla_misses).where(rep_loads.c.rep_id == rep_id)) or 0)


# --- teams and accounts --------------------------------------------------------------------------------------------


async def upsert_team(session: DbSession, *, team_id: str, name: str, manager: str | None, now: datetime) -> None:
    """Create or rename a team."""
    if await session.scalar(select(teams.c.team_id).where(teams.c.team_id == team_id)) is None:
        await session.execute(teams.insert().values(team_id=team_id, name=name, manager=manager, created_at=now))
    else:
        await session.execute(update(teams).where(teams.c.team_id == team_id).values(name=name, manager=manager))


async def list_teams(session: DbSession) -> list[dict[str, Any]]:
    """Every team with its rep counts."""
    members = (
        select(
            reps.c.team,
            func.count().label("reps"),
            func.sum(case((reps.c.active, 1), else_=0)).label("active_reps"),
        )
        .group_by(reps.c.team)
        .subquery()
    )
    query = (
        select(
            teams,
            func.coalesce(members.c.reps, 0).label("reps"),
            func.coalesce(members.c.active_reps, 0).label("active_reps"),
        )
        .join(members, members.c.team == teams.c.team_id, isouter=True)
        .order_by(teams.c.team_id)
    )
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def team_manager(session: DbSession, *, team_id: str | None) -> str | None:
    """The manager of a team."""
    if team_id is None:
        return None
    result: str | None = await session.scalar(select(teams.c.manager).where(teams.c.team_id == team_id))
    return result


async def upsert_account(session: DbSession, *, domain: str, rep_id: str, name: str | None, now: datetime) -> None:
    """Give the account (company domain) to a rep."""
    await session.execute(delete(accounts).where(accounts.c.domain == domain))
    await session.execute(accounts.insert().values(domain=domain, rep_id=rep_id, name=name, created_at=now))


async def list_accounts(session: DbSession) -> list[dict[str, Any]]:
    """Every account and its owner."""
    return [dict(row) for row in (await session.execute(select(accounts).order_by(accounts.c.domain))).mappings()]


async def delete_account(session: DbSession, *, domain: str) -> bool:
    """Forget an account; True if there was one."""
    return bool((await session.execute(delete(accounts).where(accounts.c.domain == domain))).rowcount)  # type: ignore[attr-defined]


async def account_owner(session: DbSession, *, domain: str | None) -> str | None:
    """The rep owning `domain`, if any."""
    if not domain:
        return None
    result: str | None = await session.scalar(select(accounts.c.rep_id).where(accounts.c.domain == domain.lower()))
    return result


_LOCK_ROTATIONS = {
    dialect: select(rotations.c.pool, rotations.c.weights).where(among(rotations.c.pool, "pools", dialect))
    .order_by(rotations.c.pool).with_for_update()
    for dialect in _DIALECTS
}  # fmt: skip


# --- policies ------------------------------------------------------------------------------------------------------


async def add_policy(session: DbSession, *, name: str, definition: dict[str, Any], at: datetime) -> int:
    """Store a policy as a draft; returns its version."""
    version = int(await session.scalar(select(func.coalesce(func.max(policies.c.version), 0))) or 0) + 1
    await session.execute(
        policies.insert().values(version=version, name=name, definition=definition, created_at=at, active=False)
    )
    return version


async def list_policies(session: DbSession) -> list[dict[str, Any]]:
    """Every policy version."""
    return [dict(row) for row in (await session.execute(select(policies).order_by(policies.c.version))).mappings()]


async def load_policy(session: DbSession, *, version: int) -> dict[str, Any] | None:
    """One policy version."""
    row = (await session.execute(select(policies).where(policies.c.version == version))).mappings().first()
    return dict(row) if row else None


async def policy_definition(session: DbSession, *, version: int) -> Any:
    """The stored definition of one policy version (a version never changes once stored)."""
    return await session.scalar(select(policies.c.definition).where(policies.c.version == version))


async def active_policy(session: DbSession) -> dict[str, Any] | None:
    """The active policy, or None (then the default policy applies)."""
    row = (await session.execute(_ACTIVE_POLICY)).mappings().first()
    return dict(row) if row else None


_ACTIVE_POLICY = select(policies).where(policies.c.active)


async def activate_policy(session: DbSession, *, version: int, at: datetime) -> None:
    """Make `version` the only active policy."""
    await session.execute(update(policies).where(policies.c.active).values(active=False))
    await session.execute(update(policies).where(policies.c.version == version).values(active=True, activated_at=at))


# --- rotations -----------------------------------------------------------------------------------------------------


async def lock_rotation(session: DbSession, *, pool: str) -> dict[str, int]:
    """Take the pool's turn lock (a PostgreSQL row lock, held to commit) and return its round-robin totals."""
    statement = select(rotations.c.weights).where(rotations.c.pool == pool).with_for_update()
    row = (await session.execute(statement)).first()
    if row is None:
        await session.execute(rotations.insert().values(pool=pool, weights={}))
        row = (await session.execute(statement)).first()
    return dict(row[0] or {}) if row else {}


async def lock_rotations(session: DbSession, *, pools: Sequence[str]) -> dict[str, dict[str, int]]:
    """`lock_rotation` for many pools at once (taken in pool order): their round-robin totals, by pool."""
    if not pools:
        return {}
    rows = await session.execute(_LOCK_ROTATIONS[_dialect(session)], {"pools": list(pools)})
    found = {pool: dict(weights or {}) for pool, weights in rows.all()}
    missing = sorted(set(pools) - set(found))
    if missing:
        await session.execute(rotations.insert(), [{"pool": pool, "weights": {}} for pool in missing])
    return {**found, **{pool: {} for pool in missing}}


async def peek_rotation(session: DbSession, *, pool: str) -> dict[str, int]:
    """The pool's round-robin totals, without taking its lock (for simulations)."""
    row = (await session.execute(select(rotations.c.weights).where(rotations.c.pool == pool))).first()
    return dict(row[0] or {}) if row else {}


async def save_rotation(session: DbSession, *, pool: str, weights: dict[str, int], rep_id: str) -> None:
    """Store the pool's round-robin totals after a pick."""
    await save_rotations(session, [(pool, weights, rep_id)])


async def save_rotations(session: DbSession, turns: Sequence[tuple[str, dict[str, int], str]]) -> None:
    """Store (pool, round-robin totals, rep of the last pick) after picks, with one statement (sent with the
    transaction's other writes: shared.writes)."""
    rows = [{"pool": pool, "weights": weights, "last_rep_id": rep_id} for pool, weights, rep_id in turns]
    await update_rows(session, rotations, rows, key=("pool",))


def adds_turns(session: DbSession) -> bool:
    """Whether `add_to_rotations` works on the session's database (PostgreSQL: migration 7 made its function)."""
    return _dialect(session) == POSTGRES


async def add_to_rotations(session: DbSession, turns: Sequence[tuple[str, dict[str, int], str]]) -> None:
    """Add (pool, change of each rep's round-robin total, rep of the last pick) to the pools' stored totals, kept with
    the transaction's other writes as a checked write (shared.writes): a pool without a row fails the statement
    sending it (IntegrityError). For turns taken on totals read without the pools' locks: the change is added to
    the totals as they are at the commit, not written over them, so another replica's turns taken meanwhile stay
    counted and neither waits for the other (smooth weighted round robin only adds to the totals, and every pick
    leaves their sum as it was)."""
    ordered = sorted(turns)
    await write_checked(session, _ADD_TO_ROTATIONS, {
        "pool": [pool for pool, _, _ in ordered], "changes": [json_text(changes) for _, changes, _ in ordered],
        "last_rep_id": [rep_id for _, _, rep_id in ordered],
    })  # fmt: skip


# On a row another transaction changed meanwhile, PostgreSQL works the new totals out again from its new version once
# that one commits (READ COMMITTED), so concurrent additions all count.
_ADD_TO_ROTATIONS = CheckedWrite(
    rotations,
    "UPDATE rotations SET last_rep_id = turn.last_rep_id, "
    "weights = add_to_turns(rotations.weights, turn.changes::json) "
    "FROM unnest(CAST(:{p}pool AS varchar[]), CAST(:{p}changes AS text[]), CAST(:{p}last_rep_id AS varchar[])) "
    "AS turn(pool, changes, last_rep_id) WHERE rotations.pool = turn.pool",
)


# --- assignments ---------------------------------------------------------------------------------------------------


async def load_assignment(session: DbSession, *, lead_id: str, for_update: bool = False) -> dict[str, Any] | None:
    """The lead's routing state, or None."""
    query = select(assignments).where(assignments.c.lead_id == lead_id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def insert_assignment(session: DbSession, **values: Any) -> None:
    """Store a lead's first routing decision."""
    await session.execute(assignments.insert().values(**values))


@dataclass(frozen=True)
class RunLeads:
    """What routing holds about a run's leads: which were erased, the routing status of those routed (their rows
    locked to the commit), the owners of their companies' accounts (by lower-cased domain), which routing policy is
    active, the round-robin totals of the pools asked for (read without their locks: a run adds its turns to them,
    see `add_to_rotations`; a pool without a row is absent), whether any webhook subscription is active, and on
    PostgreSQL every rep with their load (`roster`, as `load_roster` reads it; None: not read)."""

    erased: set[str]
    statuses: dict[str, str | None]
    owners: dict[str, str]
    policy_version: int | None = None  # the active routing policy's (None: the default policy)
    rotations: dict[str, dict[str, int]] = field(default_factory=dict)
    subscribed: bool = True
    roster: tuple[list[Rep], dict[str, Load]] | None = None


async def read_run_leads(
    session: DbSession,
    *,
    lead_ids: Sequence[str],
    domains: Iterable[str | None],
    pools: Iterable[str] = (),
    lock: bool = True,
) -> RunLeads:
    """`RunLeads` in one round trip; the routing states' rows are locked in lead id order, so two replicas locking
    overlapping leads never wait on each other in a cycle (the pools' turns are read, not locked: a run locks them
    later, once decided, as it adds its turns). Without `lock` (PostgreSQL only), a plain read: nothing is locked,
    and no transaction begins (shared.first_write)."""
    wanted = sorted({domain.lower() for domain in domains if domain})
    parameters = {"lead_ids": list(lead_ids), "domains": wanted, "pools": sorted(set(pools))}
    known = RunLeads(erased=set(), statuses={}, owners={}, subscribed=False)
    policy_version: int | None = None
    subscribed = False
    postgres = session.get_bind().dialect.name == "postgresql"
    rep_rows: list[dict[str, Any]] = []
    statement = _RUN_LEADS
    if postgres:
        few = few_enough(*parameters.values())
        statement = _RUN_LEADS_AND_ROSTER[few] if lock else _PEEK_RUN_LEADS_AND_ROSTER[few]
    for fact, key, value in await session.execute(statement, parameters):
        if fact == "rep":
            rep_rows.append(json.loads(value))
        elif fact == "erased":
            known.erased.add(key)
        elif fact == "status":
            known.statuses[key] = value
        elif fact == "owner":
            known.owners[key] = value
        elif fact == "rotation":
            known.rotations[key] = dict(json.loads(value) or {}) if value else {}
        elif fact == "subscribed":
            subscribed = True
        else:  # one is active (activating another retires it)
            policy_version = int(key)
    roster = None
    if postgres:
        rep_rows.sort(key=lambda row: str(row["rep_id"]))
        roster = [rep_from_row(row) for row in rep_rows], {row["rep_id"]: load_from_row(row) for row in rep_rows}
    return RunLeads(known.erased, known.statuses, known.owners, policy_version, known.rotations, subscribed, roster)


def _run_leads(dialect: str) -> CompoundSelect[tuple[str, str | None, str | None]]:
    """What `read_run_leads` reads, the routing states' rows locked. Built for `dialect` as `among`
    builds: "postgresql" takes each list as one array (one prepared statement whatever the run's size), any other as
    an IN list (one per number of values)."""
    # The locking select as a CTE: PostgreSQL takes FOR UPDATE there (not on a UNION), rows in key order.
    statuses = (
        select(assignments.c.lead_id, assignments.c.status).where(among(assignments.c.lead_id, "lead_ids", dialect))
        .order_by(assignments.c.lead_id).with_for_update().cte("locked_statuses")
    )  # fmt: skip
    return union_all(
        select(literal_column("'erased'").label("fact"), _erased.c.lead_id.label("key"), null().label("value")).where(
            among(_erased.c.lead_id, "lead_ids", dialect)
        ),
        select(literal_column("'status'"), statuses.c.lead_id, statuses.c.status),
        select(literal_column("'owner'"), accounts.c.domain, accounts.c.rep_id).where(
            among(accounts.c.domain, "domains", dialect)
        ),
        select(literal_column("'policy'"), cast(policies.c.version, String), null()).where(policies.c.active),
        select(literal_column("'rotation'"), rotations.c.pool, cast(rotations.c.weights, String)).where(
            among(rotations.c.pool, "pools", dialect)
        ),
        select(literal_column("'subscribed'"), null(), null()).where(exists().where(webhook_subscriptions.c.active)),
    )


_erased = metadata.tables[ERASED_LEADS]
_RUN_LEADS = _run_leads("sqlite")
# PostgreSQL: the roster too, a row as JSON per rep (the round trip `load_roster` would take on its own).
_ROSTER = _REPS_WITH_LOADS.order_by(None).subquery("roster")
_ROSTER_ROWS = select(
    literal_column("'rep'"), _ROSTER.c.rep_id, cast(func.row_to_json(literal_column("roster")), String)
)


def _peek_run_leads(dialect: str) -> CompoundSelect[tuple[str, str | None, str | None]]:
    """`_run_leads` and the roster without locks: a plain SELECT (no CTE), so it runs before the transaction
    begins."""
    selects = _run_leads(dialect).selects
    return union_all(
        selects[0],
        select(literal_column("'status'"), assignments.c.lead_id, assignments.c.status).where(
            among(assignments.c.lead_id, "lead_ids", dialect)
        ),
        *selects[2:],
        _ROSTER_ROWS,
    )


# PostgreSQL, by whether the run's lists are few (shared.db.FEW_VALUES: IN lists) or not (arrays).
_RUN_LEADS_AND_ROSTER: dict[bool, CompoundSelect[tuple[str, str | None, str | None]]] = {
    few: union_all(*_run_leads("sqlite" if few else POSTGRES).selects, _ROSTER_ROWS) for few in (True, False)
}
_PEEK_RUN_LEADS_AND_ROSTER = {few: _peek_run_leads("sqlite" if few else POSTGRES) for few in (True, False)}


async def insert_assignments(session: DbSession, rows: Sequence[dict[str, Any]]) -> None:
    """Store many leads' first routing decisions with one statement (sent with the transaction's other writes)."""
    await write_rows(session, assignments, rows)


async def rescore_queued(session: DbSession, leads: Sequence[Mapping[str, Any]], *, at: datetime) -> None:
    """Let queued leads wait with their new score: `leads` are lead views (lead_id, score, grade, verdict)."""
    if not leads:
        return
    statement = (
        update(assignments)
        .where(assignments.c.lead_id == bindparam("rescored_lead_id"))
        .values(lead=bindparam("new_lead"), score=bindparam("new_score"), grade=bindparam("new_grade"),
                verdict=bindparam("new_verdict"), updated_at=bindparam("rescored_at"))
    )  # fmt: skip
    rows = [
        {"rescored_lead_id": lead["lead_id"], "new_lead": dict(lead), "new_score": lead["score"],
         "new_grade": lead.get("grade"), "new_verdict": lead.get("verdict"), "rescored_at": at}
        for lead in leads
    ]  # fmt: skip
    await session.execute(statement, rows)


async def update_assignment(
    session: DbSession, *, lead_id: str, expect_status: str | None = None, **values: Any
) -> bool:
    """Change a lead's routing state; with `expect_status`, only if it still has that status (so two replicas
    never both act on one timer). True if it changed."""
    condition = assignments.c.lead_id == lead_id
    if expect_status is not None:
        condition = and_(condition, assignments.c.status == expect_status)
    result = await session.execute(update(assignments).where(condition).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def add_decisions(session: DbSession, rows: Sequence[dict[str, Any]]) -> None:
    """Append to leads' routing histories, in order, with one statement (sent with the transaction's other
    writes)."""
    await write_rows(session, decisions, rows)


async def lead_history(session: DbSession, *, lead_id: str) -> list[dict[str, Any]]:
    """Every routing decision on a lead, oldest first."""
    query = select(decisions).where(decisions.c.lead_id == lead_id).order_by(decisions.c.id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def due_for_sla(session: DbSession, *, now: datetime, limit: int) -> list[str]:
    """Leads whose rep did not accept by the deadline, most overdue first."""
    query = (
        select(assignments.c.lead_id)
        .where(assignments.c.status == "assigned", assignments.c.sla_deadline <= now)
        .order_by(assignments.c.sla_deadline)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def queued_leads(session: DbSession, *, limit: int) -> list[str]:
    """Leads waiting for an eligible rep, oldest first."""
    query = select(assignments.c.lead_id).where(assignments.c.status == "queued").order_by(assignments.c.decided_at)
    return list((await session.scalars(query.limit(limit))).all())


async def claim_lead(
    session: DbSession, *, lead_id: str, status: str, due_by: datetime | None = None
) -> dict[str, Any] | None:
    """Lock the lead's row for this transaction if it still has `status` (and, with `due_by`, its SLA deadline has
    passed); None if not, or if another replica holds it right now (PostgreSQL SKIP LOCKED)."""
    query = select(assignments).where(assignments.c.lead_id == lead_id, assignments.c.status == status)
    if due_by is not None:
        query = query.where(assignments.c.sla_deadline <= due_by)
    row = (await session.execute(query.with_for_update(skip_locked=True))).mappings().first()
    return dict(row) if row else None


async def queue_lengths(session: DbSession) -> dict[str, int]:
    """Leads waiting, per pool."""
    query = (
        select(assignments.c.pool, func.count()).where(assignments.c.status == "queued").group_by(assignments.c.pool)
    )
    return {pool or DEFAULT_POOL: count for pool, count in (await session.execute(query)).all()}


async def erase_personal_data(session: DbSession, *, lead_id: str) -> None:
    """Strip the lead's personal fields from its routing state, its queued webhook deliveries and the stream."""
    current = await load_assignment(session, lead_id=lead_id, for_update=True)
    if current is not None and current.get("lead"):
        await update_assignment(session, lead_id=lead_id, lead=strip_personal(current["lead"]))
    for table, key in ((webhook_deliveries, webhook_deliveries.c.delivery_id), (stream_events, stream_events.c.seq)):
        rows = (await session.execute(select(key, table.c.event).where(table.c.lead_id == lead_id))).all()
        for row_key, stored in rows:
            await session.execute(update(table).where(key == row_key).values(event=strip_personal(stored)))
