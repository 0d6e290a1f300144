"""scoring's tables, migrations and queries."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    CompoundSelect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    cast,
    delete,
    func,
    literal_column,
    null,
    select,
    union_all,
    update,
)

from services.scoring.learning import Weights
from services.scoring.rules import Touch
from shared.db import Migration, UtcDateTime, add_columns, among, create_tables, few_enough
from shared.privacy import ERASED_LEADS, add_privacy_tables
from shared.sessions import DbSession
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.writes import write_rows

metadata = MetaData()
add_messaging_tables(metadata)
Id = BigInteger().with_variant(Integer, "sqlite")

scores = Table(
    "scores",
    metadata,
    Column("lead_id", String(36), primary_key=True),
    Column("score", Integer, nullable=False),
    Column("verdict", String(20), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("contributions", JSON, nullable=False),
    Column("scored_at", UtcDateTime(), nullable=False),
    # version 2
    Column("grade", String(2)),
    Column("fit_score", Integer),
    Column("engagement_score", Integer),
    Column("rules_score", Integer),
    Column("learned_probability", Float),
)
SCORE_COLUMNS_V2 = ("grade", "fit_score", "engagement_score", "rules_score", "learned_probability")
SCORE_COLUMNS = tuple(column.name for column in scores.columns)

scoring_models = Table(
    "scoring_models",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("status", String(20), nullable=False),  # draft | active | retired
    Column("created_at", UtcDateTime(), nullable=False),
    Column("activated_at", UtcDateTime()),
)

lead_facts = Table(
    "lead_facts",
    metadata,
    Column("lead_id", String(36), primary_key=True),
    Column("facts", JSON, nullable=False),
    Column("captured_at", UtcDateTime(), nullable=False),
    Column("closed", Boolean, nullable=False),
)

touches = Table(
    "touches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("lead_id", String(36), nullable=False, index=True),
    Column("kind", String(100), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

learned_weights = Table(
    "learned_weights",
    metadata,
    Column("token", String(200), primary_key=True),
    Column("weight", Float, nullable=False),
    Column("accumulated", Float, nullable=False),
)

learned_state = Table(
    "learned_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("bias", Float, nullable=False),
    Column("bias_accumulated", Float, nullable=False),
    Column("outcomes", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# What the model predicted just before it learned from each outcome: an honest, never-trained-on holdout.
predictions = Table(
    "predictions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("lead_id", String(36), nullable=False),
    Column("label", Integer, nullable=False),
    Column("probability", Float, nullable=False),
    Column("rules_score", Integer, nullable=False),
    Column("score", Integer, nullable=False),
    Column("outcomes_before", Integer, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

pending_outcomes = Table(
    "pending_outcomes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("lead_id", String(36), nullable=False, index=True),
    Column("kind", String(30), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
)

rescore_jobs = Table(
    "rescore_jobs",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("model_version", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # running | finished
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime()),
)
Index("ix_scores_verdict", scores.c.verdict)


def _seed_learned_state(connection: Any) -> None:
    connection.execute(
        learned_state.insert().values(
            id=1, bias=0.0, bias_accumulated=0.0, outcomes=0, updated_at=datetime.fromtimestamp(0).astimezone()
        )
    )


add_privacy_tables(metadata)

MIGRATIONS = (
    Migration(1, "scores, outbox and inbox", create_tables(metadata, "scores", OUTBOX, INBOX)),
    Migration(2, "score grades and parts", add_columns(metadata, "scores", *SCORE_COLUMNS_V2)),
    Migration(3, "models, lead facts, touches, learned model, predictions, pending outcomes, re-score jobs",
              create_tables(metadata, "scoring_models", "lead_facts", "touches", "learned_weights", "learned_state",
                            "predictions", "pending_outcomes", "rescore_jobs")),
    Migration(4, "learned model starts empty", _seed_learned_state),
    Migration(5, "erased leads", create_tables(metadata, ERASED_LEADS)),
)  # fmt: skip


# --- scores ------------------------------------------------------------------------------------------------------


async def save_scores(session: DbSession, *, scored: Sequence[Mapping[str, Any]]) -> None:
    """Store leads' current scores with one statement, replacing the previous ones (a lead repeated: its last)."""
    latest = {row["lead_id"]: dict(row) for row in scored}
    if latest:
        replaced = tuple(name for name in SCORE_COLUMNS if name != "lead_id")
        await _save(session, "scores", list(latest.values()), replaced)


async def load_score(session: DbSession, *, lead_id: str) -> dict[str, Any] | None:
    """The lead's current score, or None."""
    row = (await session.execute(select(scores).where(scores.c.lead_id == lead_id))).mappings().first()
    return dict(row) if row else None


async def recent_scores(session: DbSession, *, limit: int) -> list[dict[str, Any]]:
    """The scores of the most recently captured leads."""
    query = (
        select(scores, lead_facts.c.facts).join(lead_facts, lead_facts.c.lead_id == scores.c.lead_id)
        .order_by(lead_facts.c.captured_at.desc()).limit(limit)
    )  # fmt: skip
    return [dict(row) for row in (await session.execute(query)).mappings()]


# --- models ------------------------------------------------------------------------------------------------------


async def add_model(session: DbSession, *, name: str, definition: dict[str, Any], at: datetime) -> int:
    """Store a draft model; returns its version number."""
    version = int(await session.scalar(select(func.coalesce(func.max(scoring_models.c.version), 0))) or 0) + 1
    await session.execute(
        scoring_models.insert().values(version=version, name=name, definition=definition, status="draft", created_at=at)
    )
    return version


async def load_models(session: DbSession) -> list[dict[str, Any]]:
    """Every model version, newest first."""
    query = select(scoring_models).order_by(scoring_models.c.version.desc())
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def load_model(session: DbSession, *, version: int) -> dict[str, Any] | None:
    """One model version."""
    query = select(scoring_models).where(scoring_models.c.version == version)
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def active_model(session: DbSession) -> dict[str, Any] | None:
    """The model in force, if one was activated."""
    row = (await session.execute(_ACTIVE_MODEL)).mappings().first()
    return dict(row) if row else None


_ACTIVE_MODEL = select(scoring_models).where(scoring_models.c.status == "active")


async def activate_model(session: DbSession, *, version: int, at: datetime) -> None:
    """Put a version in force and retire the one before."""
    await session.execute(update(scoring_models).where(scoring_models.c.status == "active").values(status="retired"))
    await session.execute(
        update(scoring_models).where(scoring_models.c.version == version).values(status="active", activated_at=at)
    )


# --- leads and what they did -------------------------------------------------------------------------------------


async def save_all_facts(session: DbSession, *, leads: Sequence[tuple[str, dict[str, Any], datetime]]) -> None:
    """Store (lead id, facts, captured at) leads as they now stand with one statement: a known lead keeps when it
    was captured and whether it is closed; a lead repeated keeps its last facts and its first capture time."""
    rows: dict[str, dict[str, Any]] = {}
    for lead_id, facts, captured_at in leads:
        row = rows.setdefault(lead_id, {"lead_id": lead_id, "captured_at": captured_at, "closed": False})
        row["facts"] = facts
    if rows:
        await _save(session, "lead_facts", list(rows.values()), ("facts",))


async def load_facts(session: DbSession, *, lead_id: str) -> dict[str, Any] | None:
    """The lead's facts and whether it is closed, or None if scoring has not seen the lead."""
    row = (await session.execute(select(lead_facts).where(lead_facts.c.lead_id == lead_id))).mappings().first()
    return dict(row) if row else None


async def close_lead(session: DbSession, *, lead_id: str) -> None:
    """The lead was won, lost or disqualified: no more re-scoring."""
    await session.execute(update(lead_facts).where(lead_facts.c.lead_id == lead_id).values(closed=True))


async def open_lead_ids(session: DbSession, *, after: str, limit: int) -> list[str]:
    """Open leads in id order, for re-scoring in pages."""
    query = (
        select(lead_facts.c.lead_id).where(lead_facts.c.closed.is_(False), lead_facts.c.lead_id > after)
        .order_by(lead_facts.c.lead_id).limit(limit)
    )  # fmt: skip
    return list((await session.execute(query)).scalars())


async def count_open_leads(session: DbSession) -> int:
    """How many leads are still open."""
    count = await session.scalar(select(func.count()).select_from(lead_facts).where(lead_facts.c.closed.is_(False)))
    return int(count or 0)


async def qualified_open_lead_ids(session: DbSession) -> list[str]:
    """Open leads whose current verdict is qualified (candidates for going cold)."""
    query = (
        select(scores.c.lead_id).join(lead_facts, lead_facts.c.lead_id == scores.c.lead_id)
        .where(scores.c.verdict == "qualified", lead_facts.c.closed.is_(False), scores.c.engagement_score > 0)
    )  # fmt: skip
    return list((await session.execute(query)).scalars())


async def add_touches(session: DbSession, *, done: Sequence[tuple[str, Touch]]) -> None:
    """Remember what (lead id, touch) leads did, in order, with one statement."""
    if done:
        await session.execute(
            touches.insert(), [{"lead_id": lead_id, "kind": touch.kind, "at": touch.at} for lead_id, touch in done]
        )


async def load_touches(session: DbSession, *, lead_id: str) -> list[Touch]:
    """Everything the lead did, oldest first."""
    query = select(touches.c.kind, touches.c.at).where(touches.c.lead_id == lead_id).order_by(touches.c.at)
    return [Touch(kind=kind, at=at) for kind, at in await session.execute(query)]


@dataclass(frozen=True)
class Known:
    """What scoring already holds about a run's leads: which were erased, what each did (oldest first), their current
    verdicts and the outcomes held for them (oldest first). Leads without any are left out. On PostgreSQL the
    models in force too (`in_force`, as `models_in_force` reads them; None: not read)."""

    erased: set[str]
    touches: dict[str, list[Touch]]
    verdicts: dict[str, str]
    held: dict[str, list[tuple[str, datetime]]]
    in_force: ModelsInForce | None = None


async def known_about(session: DbSession, *, lead_ids: Sequence[str]) -> Known:
    """Read what scoring holds about `lead_ids` in one statement (four before: a round trip each on every run), and
    take the outcomes held for them (they are removed: the caller learns from them now)."""
    known = Known(erased=set(), touches={}, verdicts={}, held={})
    if not lead_ids:
        return known
    touched: dict[str, list[tuple[datetime, int, str]]] = {}
    held: dict[str, list[tuple[int, str, datetime]]] = {}
    in_force: ModelsInForce | None = None
    postgres = session.get_bind().dialect.name == "postgresql"
    statement = _KNOWN_AND_MODELS[few_enough(lead_ids)] if postgres else _KNOWN
    for fact, lead_id, detail, at, position in await session.execute(statement, {"lead_ids": list(lead_ids)}):
        if fact == "touch":
            touched.setdefault(lead_id, []).append((at, position, detail))
        elif fact == "held":
            held.setdefault(lead_id, []).append((position, detail, at))
        elif fact == "verdict":
            known.verdicts[lead_id] = detail
        elif fact == "models":
            learned = json.loads(detail)
            in_force = ModelsInForce(rules_version=learned["active_version"], learned=learned)
        else:
            known.erased.add(lead_id)
    for lead_id, done in touched.items():
        known.touches[lead_id] = [Touch(kind=kind, at=at) for at, _, kind in sorted(done)]
    for lead_id, outcomes in held.items():
        known.held[lead_id] = [(kind, occurred_at) for _, kind, occurred_at in sorted(outcomes)]
    if known.held:
        await session.execute(delete(pending_outcomes).where(pending_outcomes.c.lead_id.in_(list(known.held))))
    return replace(known, in_force=in_force)


def _known_statement(dialect: str) -> CompoundSelect[Any]:
    # Touches first: a union's columns take their types (UtcDateTime's conversion on SQLite) from its first select.
    # Built for `dialect` as `among` builds: "postgresql" takes the ids as one array (one prepared statement whatever
    # the run's size), any other as an IN list (one per number of ids).
    def for_leads(column: ColumnElement[str]) -> ColumnElement[bool]:
        return among(column, "lead_ids", dialect)

    erased = metadata.tables[ERASED_LEADS]
    return union_all(
        select(literal_column("'touch'", String).label("fact"), touches.c.lead_id, touches.c.kind.label("detail"),
               touches.c.at, touches.c.id.label("position")).where(for_leads(touches.c.lead_id)),
        select(literal_column("'held'", String), pending_outcomes.c.lead_id, pending_outcomes.c.kind,
               pending_outcomes.c.occurred_at, pending_outcomes.c.id).where(for_leads(pending_outcomes.c.lead_id)),
        select(literal_column("'verdict'", String), scores.c.lead_id, scores.c.verdict, null(), null())
        .where(for_leads(scores.c.lead_id)),
        select(literal_column("'erased'", String), erased.c.lead_id, null(), null(), null())
        .where(for_leads(erased.c.lead_id)),
    )  # fmt: skip


# Built once: building a statement takes about half the CPU of running it.
_KNOWN = _known_statement("sqlite")


# --- the learned model -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelsInForce:
    """What a run of captures starts from: the version of the rules model in force (None: the starter model) and
    the learned model's state (its weights are read per token)."""

    rules_version: int | None
    learned: Mapping[str, Any]


async def models_in_force(session: DbSession) -> ModelsInForce:
    """The active rules model's version and the learned model's state, in one round trip."""
    row = (await session.execute(_MODELS_IN_FORCE)).mappings().one()
    return ModelsInForce(rules_version=row["active_version"], learned=dict(row))


async def load_weights(session: DbSession, *, tokens: list[str], state: Mapping[str, Any] | None = None) -> Weights:
    """The learned model, restricted to `tokens` (all a prediction or an update needs); its state as read by
    `models_in_force` in this transaction, if given and unchanged since."""
    stored = state if state is not None else (await session.execute(_LEARNED_STATE)).mappings().one()
    model = Weights(bias=stored["bias"], bias_accumulated=stored["bias_accumulated"], outcomes=stored["outcomes"])
    if tokens and model.outcomes:
        rows = await session.execute(
            _LEARNED_WEIGHTS[session.get_bind().dialect.name == "postgresql"], {"tokens": tokens}
        )
        for token, weight, accumulated in rows:
            model.weights[token] = weight
            model.accumulated[token] = accumulated
    return model


_LEARNED_STATE = select(learned_state).where(learned_state.c.id == 1)
_ACTIVE_VERSION = (
    select(scoring_models.c.version)
    .where(scoring_models.c.status == "active")
    .order_by(scoring_models.c.version)
    .limit(1)
    .scalar_subquery()
)
_MODELS_IN_FORCE = select(learned_state, _ACTIVE_VERSION.label("active_version")).where(learned_state.c.id == 1)
# PostgreSQL: `_KNOWN` with the models in force as one more row, their state as JSON (a float's text in PostgreSQL
# reads back as the same float), the round trip `models_in_force` would take on its own.
# By whether the run's ids are few (shared.db.FEW_VALUES: an IN list) or not (an array).
_KNOWN_AND_MODELS: dict[bool, CompoundSelect[Any]] = {
    few: union_all(
        *_known_statement("sqlite" if few else "postgresql").selects,
        select(
            literal_column("'models'", String), null(),
            cast(func.json_build_object(
                "bias", learned_state.c.bias, "bias_accumulated", learned_state.c.bias_accumulated,
                "outcomes", learned_state.c.outcomes, "active_version", _ACTIVE_VERSION,
            ), String),
            null(), null(),
        ).where(learned_state.c.id == 1),
    )
    for few in (True, False)
}  # fmt: skip
# By whether the database is PostgreSQL (one array of tokens there, whatever their number).
_LEARNED_WEIGHTS = {
    postgres: select(learned_weights).where(among(learned_weights.c.token, "tokens", "postgresql" if postgres else ""))
    for postgres in (False, True)
}


async def lock_learned_state(session: DbSession) -> None:
    """Serialise model updates across replicas (a row lock on PostgreSQL)."""
    await session.execute(select(learned_state.c.id).where(learned_state.c.id == 1).with_for_update())


async def save_weights(session: DbSession, *, model: Weights, tokens: set[str], at: datetime) -> None:
    """Store the updated weights of `tokens` and the model's bias and outcome count."""
    await session.execute(
        update(learned_state)
        .where(learned_state.c.id == 1)
        .values(bias=model.bias, bias_accumulated=model.bias_accumulated, outcomes=model.outcomes, updated_at=at)
    )
    if tokens:
        await session.execute(delete(learned_weights).where(learned_weights.c.token.in_(sorted(tokens))))
        await session.execute(learned_weights.insert(), [
            {"token": token, "weight": model.weights[token], "accumulated": model.accumulated[token]}
            for token in sorted(tokens)
        ])  # fmt: skip


async def learned_summary(session: DbSession) -> dict[str, Any]:
    """Outcomes learned from, features known, last update."""
    state = (await session.execute(select(learned_state).where(learned_state.c.id == 1))).mappings().one()
    features = await session.scalar(select(func.count()).select_from(learned_weights))
    return {"outcomes": state["outcomes"], "features": int(features or 0), "updated_at": state["updated_at"]}


async def add_prediction(session: DbSession, **values: Any) -> None:
    """Log what the model predicted before learning from an outcome."""
    await session.execute(predictions.insert().values(**values))


async def load_predictions(session: DbSession) -> list[dict[str, Any]]:
    """Every logged prediction, oldest first."""
    query = select(predictions).order_by(predictions.c.id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def hold_outcome(session: DbSession, *, lead_id: str, kind: str, occurred_at: datetime) -> None:
    """Keep an outcome of a lead scoring has not seen yet."""
    await session.execute(pending_outcomes.insert().values(lead_id=lead_id, kind=kind, occurred_at=occurred_at))


async def take_outcomes_held_for_known_leads(session: DbSession, *, limit: int) -> list[tuple[str, str, datetime]]:
    """Outcomes held for leads whose facts are stored by now (lead id, kind, when), oldest first, at most `limit`:
    locked (those another transaction locked are skipped) and removed, for this transaction to learn from.

    A lead's capture takes the outcomes held for it when it stores its facts, so normally none are left. Two
    replicas can leave some: one holds an outcome for a lead it has no facts for while the other, not seeing that
    hold yet, stores the lead's facts."""
    known = select(lead_facts.c.lead_id).where(lead_facts.c.lead_id == pending_outcomes.c.lead_id).exists()
    query = (
        select(
            pending_outcomes.c.id, pending_outcomes.c.lead_id, pending_outcomes.c.kind, pending_outcomes.c.occurred_at
        )
        .where(known)
        .order_by(pending_outcomes.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = (await session.execute(query)).all()
    if rows:
        await session.execute(delete(pending_outcomes).where(pending_outcomes.c.id.in_([row.id for row in rows])))
    return [(row.lead_id, row.kind, row.occurred_at) for row in rows]


# --- re-score jobs -----------------------------------------------------------------------------------------------


async def start_job(session: DbSession, *, job_id: str, version: int, total: int, at: datetime) -> None:
    """Record a re-score job."""
    await session.execute(
        rescore_jobs.insert().values(
            job_id=job_id, model_version=version, total=total, done=0, status="running", started_at=at
        )
    )


async def advance_job(session: DbSession, *, job_id: str, done: int, finished_at: datetime | None) -> None:
    """Record a re-score job's progress."""
    values: dict[str, Any] = {"done": done}
    if finished_at is not None:
        values.update(status="finished", finished_at=finished_at)
    await session.execute(update(rescore_jobs).where(rescore_jobs.c.job_id == job_id).values(**values))


async def running_job(session: DbSession) -> str | None:
    """The oldest unfinished re-score job, if any."""
    query = select(rescore_jobs.c.job_id).where(rescore_jobs.c.status == "running").order_by(rescore_jobs.c.started_at)
    return await session.scalar(query.limit(1))


async def load_job(session: DbSession, *, job_id: str) -> dict[str, Any] | None:
    """A re-score job."""
    row = (await session.execute(select(rescore_jobs).where(rescore_jobs.c.job_id == job_id))).mappings().first()
    return dict(row) if row else None


# --- upserts -----------------------------------------------------------------------------------------------------


async def _save(session: DbSession, table: str, rows: Sequence[dict[str, Any]], replaced: tuple[str, ...]) -> None:
    """Insert `rows` (one shape) into `table`, replacing the `replaced` columns of those already there (sent with the
    transaction's other writes: shared.writes)."""
    await write_rows(session, metadata.tables[table], rows, replace=replaced)
