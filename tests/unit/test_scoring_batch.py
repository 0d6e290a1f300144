"""Scoring a run of captures at once: the same stored state and announcements as one by one, in a few statements."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine.default import CACHE_HIT
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring import service, store
from services.scoring.captures import fold_captures, until_each_learner
from services.scoring.handlers import HANDLERS
from services.scoring.rules import RESUBMISSION, Touch
from shared.consumer import Batched
from shared.db import make_engine
from shared.envelope import utc_now
from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadErasedV1,
    LeadMergedV1,
    LeadScoredV1,
    OutcomeKind,
    OutcomeRecordedV1,
    parse_payload,
)
from shared.uow import UnitOfWork
from tests.unit.fakes import MANAGER_LEAD, migrated_unit_of_work, outbox_events

NOW = utc_now()
MANAGER: dict[str, Any] = {**MANAGER_LEAD, "attributes": {"plan": "pro"}}


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="scoring")


@pytest.fixture
async def one_by_one(tmp_path: Path) -> AsyncIterator[UnitOfWork]:
    """A second scoring database, to apply the same captures one at a time."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'one_by_one.db'}", schema="unit")
    yield await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="scoring")
    await engine.dispose()


def _captured(lead_id: str, *, days_ago: int = 0, **fields: Any) -> LeadCapturedV1:
    return LeadCapturedV1(lead_id=lead_id, captured_at=NOW - timedelta(days=days_ago), **{**MANAGER, **fields})


def _merged(lead_id: str, *, renewed_interest: bool = True, **fields: Any) -> LeadMergedV1:
    captured = _captured(lead_id, days_ago=3, **fields)
    return LeadMergedV1(**captured.model_dump(), merged_at=NOW - timedelta(hours=1), renewed_interest=renewed_interest)


async def _outcome(uow: UnitOfWork, lead_id: str, kind: OutcomeKind) -> None:
    outcome = OutcomeRecordedV1(lead_id=lead_id, outcome_id=str(uuid.uuid4()), kind=kind, occurred_at=NOW)
    async with uow.transaction() as tx:
        await service.on_outcome(tx, outcome)


async def _given(uow: UnitOfWork) -> None:
    """A model that learned once, an erased lead, a lead with an outcome held, a qualified lead, a known lead."""
    async with uow.transaction() as tx:
        await service.on_leads_captured(tx, [_captured("seed", country="jp")], now=NOW)
    await _outcome(uow, "seed", "won")
    async with uow.transaction() as tx:
        await service.on_lead_erased(tx, LeadErasedV1(lead_id="erased", erased_at=NOW))
    await _outcome(uow, "held", "won")
    async with uow.transaction() as tx:
        await service.on_leads_captured(tx, [_captured("hot", days_ago=1), _captured("known", days_ago=2)], now=NOW)
        demo = ActivityRecordedV1(lead_id="hot", activity_id="a-1", kind="demo_request", occurred_at=NOW)
        await service.on_activity(tx, demo)


RUN: list[LeadCapturedV1] = [
    _captured("new-1", country="jp"),
    _captured("erased"),
    _merged("known", seniority="vp"),
    _captured("twice"),
    _captured("before-held"),
    _captured("held", country="jp"),
    _merged("twice", seniority="vp"),  # the same lead again: sees its first capture
    _captured("after-held", country="jp"),  # scored by the model that learned from the held outcome
    _merged("hot", seniority="staff", company=None, renewed_interest=False),  # qualified before: goes cold
    _merged("twice", renewed_interest=False),
]


async def _state(uow: UnitOfWork, *, announced_since: int) -> dict[str, Any]:
    tables = store.metadata.tables

    async def rows(name: str, *left_out: str) -> list[dict[str, Any]]:
        async with uow.read() as session:
            found = (await session.execute(select(tables[name]))).mappings()
            return sorted(({k: v for k, v in row.items() if k not in left_out} for row in found), key=repr)

    async with uow.read() as session:
        predictions = (await session.execute(select(store.predictions).order_by(store.predictions.c.id))).mappings()
        logged = [{k: v for k, v in row.items() if k not in ("id", "at")} for row in predictions]
    return {
        "facts": await rows("lead_facts"),
        "touches": await rows("touches", "id"),
        "scores": await rows("scores"),
        "weights": await rows("learned_weights"),
        "learned": await rows("learned_state", "updated_at"),
        "held": await rows("pending_outcomes", "id"),
        "predictions": logged,
        "announced": [event.data for event in await outbox_events(uow, store.metadata)][announced_since:],
    }


async def _announced(uow: UnitOfWork) -> list[LeadScoredV1]:
    return [parse_payload(event, LeadScoredV1) for event in await outbox_events(uow, store.metadata)]


# --- a run is its captures one by one ------------------------------------------------------------------------------


async def test_a_run_stores_and_announces_what_its_captures_one_by_one_would(
    uow: UnitOfWork, one_by_one: UnitOfWork
) -> None:
    for database in (uow, one_by_one):
        await _given(database)
    given = len(await _announced(uow))  # the activity given was scored at its own moment
    async with uow.transaction() as tx:
        await service.on_leads_captured(tx, RUN, now=NOW)
    for captured in RUN:
        async with one_by_one.transaction() as tx:
            await service.on_leads_captured(tx, [captured], now=NOW)
    assert await _state(uow, announced_since=given) == await _state(one_by_one, announced_since=given)


async def test_a_run_scores_each_capture_as_it_then_stood(uow: UnitOfWork) -> None:
    await _given(uow)
    before = len(await _announced(uow))
    async with uow.transaction() as tx:
        await service.on_leads_captured(tx, RUN, now=NOW)
    announced = await _announced(uow)
    assert [scored.lead_id for scored in announced[before:]] == [captured.lead_id for captured in RUN]
    by_capture = announced[before:]
    first, second, third = by_capture[3], by_capture[6], by_capture[9]
    assert (first.fit_score, first.engagement_score) == (30, 0)
    assert (second.fit_score, second.engagement_score) == (40, 10)  # promoted, and interest renewed
    assert (third.fit_score, third.engagement_score) == (30, 10)  # the resubmission before still counts
    assert by_capture[8].went_cold and by_capture[8].verdict == "nurture"
    assert "email" not in by_capture[1].lead and "attributes" not in by_capture[1].lead


async def test_a_held_outcome_is_learned_between_the_captures_around_it(uow: UnitOfWork) -> None:
    await _given(uow)
    async with uow.transaction() as tx:
        await service.on_leads_captured(tx, RUN, now=NOW)
    scored = {s.lead_id: s for s in await _announced(uow)}
    assert (scored["before-held"].learned_outcomes, scored["held"].learned_outcomes) == (1, 1)
    assert scored["after-held"].learned_outcomes == 2
    async with uow.read() as session:
        [*_, prediction] = await store.load_predictions(session)
        facts = await store.load_facts(session, lead_id="held")
    assert (prediction["lead_id"], prediction["score"]) == ("held", scored["held"].score)
    assert facts is not None and facts["closed"] is True


async def test_a_repeated_lead_keeps_its_last_facts_and_first_capture_time(uow: UnitOfWork) -> None:
    first = _captured("twice", days_ago=5)
    async with uow.transaction() as tx:
        await service.on_leads_captured(tx, [first, _merged("twice", seniority="vp")], now=NOW)
    async with uow.read() as session:
        facts = await store.load_facts(session, lead_id="twice")
        touches = await store.load_touches(session, lead_id="twice")
        score = await store.load_score(session, lead_id="twice")
    assert facts is not None and score is not None
    assert (facts["facts"]["seniority"], facts["captured_at"]) == ("vp", first.captured_at)
    assert [touch.kind for touch in touches] == [RESUBMISSION]
    assert (score["fit_score"], score["engagement_score"]) == (40, 10)


# --- a few statements, whatever the run's size ----------------------------------------------------------------------


async def _statements(engine: AsyncEngine, uow: UnitOfWork, run: Sequence[LeadCapturedV1]) -> int:
    counted: list[str] = []

    def count(*args: Any) -> None:
        counted.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with uow.transaction() as tx:
            await service.on_leads_captured(tx, run, now=NOW)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    return len([statement for statement in counted if not statement.startswith(("BEGIN", "COMMIT"))])


async def test_a_run_costs_the_statements_of_a_single_capture(engine: AsyncEngine, uow: UnitOfWork) -> None:
    await _given(uow)  # a learned model: its weights are read too
    single = await _statements(engine, uow, [_merged("lead-0")])
    many = await _statements(engine, uow, [_merged(f"lead-{n}") for n in range(1, 60)])
    assert single == many <= 7, (single, many)  # what the run holds about its leads is one read, the models one


async def test_a_run_reuses_every_statement_compiled_by_the_run_before(engine: AsyncEngine, uow: UnitOfWork) -> None:
    # Compiling a statement costs about what running it does: a statement SQLAlchemy finds no cache key for is
    # compiled again on every run (as the dialects' ON CONFLICT constructs were).
    await _given(uow)
    await _statements(engine, uow, [_merged("lead-0")])
    reused: list[tuple[str, Any]] = []

    def note(*args: Any) -> None:
        reused.append((args[2], args[4].cache_hit))

    event.listen(engine.sync_engine, "after_cursor_execute", note)
    try:
        async with uow.transaction() as tx:
            await service.on_leads_captured(tx, [_merged("lead-1"), _captured("lead-2")], now=NOW)
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", note)
    compiled_again = [statement for statement, hit in reused if hit is not CACHE_HIT]
    assert reused and not compiled_again, compiled_again


# --- the pure fold and the handlers -------------------------------------------------------------------------------


def test_a_fold_gives_each_capture_the_touches_of_the_captures_before_it() -> None:
    demo = Touch(kind="demo_request", at=NOW - timedelta(days=1))
    folded = fold_captures(
        [_merged("a"), _captured("b"), _merged("a", renewed_interest=False)], erased={"b"}, touches={"a": [demo]}
    )
    resubmitted = Touch(kind=RESUBMISSION, at=NOW - timedelta(hours=1))
    assert [capture.touches for capture in folded] == [(demo, resubmitted), (), (demo, resubmitted)]
    assert [capture.resubmitted for capture in folded] == [resubmitted, None, None]
    assert "email" not in folded[1].facts and folded[0].facts["email"] == "ada@acme.test"
    assert "merged_at" not in folded[0].facts


def test_a_run_is_cut_after_the_first_capture_of_each_lead_with_held_outcomes() -> None:
    folded = fold_captures([_captured(lead) for lead in "abcbd"], erased=(), touches={})
    parts = [[capture.lead_id for capture in part] for part in until_each_learner(folded, learners={"b", "d"})]
    assert parts == [["a", "b"], ["c", "b", "d"]]


async def test_the_capture_and_merge_handlers_take_runs(uow: UnitOfWork) -> None:
    captured = [_captured(f"lead-{n}").to_event(source="/baton/lead_intake") for n in range(3)]
    merged = [_merged("lead-1").to_event(source="/baton/lead_intake")]
    for events in (captured, merged):
        handler = HANDLERS[events[0].type]
        assert isinstance(handler, Batched)
        async with uow.transaction() as tx:
            await handler.apply_run(tx, events)
    assert [(s.lead_id, s.engagement_score) for s in await _announced(uow)] == [
        ("lead-0", 0),
        ("lead-1", 0),
        ("lead-2", 0),
        ("lead-1", 10),
    ]
