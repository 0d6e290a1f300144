"""Routing a scored lead: one stored, announced decision per lead, taking turns across leads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import store
from services.routing.service import add_rep, assign_lead
from shared.events import LeadRoutedV1, LeadScoredV1, parse_payload
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")


def _scored(lead_id: str, score: int = 70) -> LeadScoredV1:
    return LeadScoredV1(
        lead_id=lead_id,
        score=score,
        verdict="qualified" if score >= 50 else "nurture",
        model_version="rules-v1",
        contributions=(),
        scored_at=datetime(2024, 5, 1, tzinfo=UTC),
    )


async def _route(uow: UnitOfWork, *lead_ids: str) -> None:
    for lead_id in lead_ids:
        async with uow.transaction() as tx:
            await assign_lead(tx, _scored(lead_id))


async def _routed(uow: UnitOfWork) -> list[LeadRoutedV1]:
    return [parse_payload(event, LeadRoutedV1) for event in await outbox_events(uow, store.metadata)]


async def _add_reps(uow: UnitOfWork, *reps: tuple[str, bool]) -> None:
    for rep_id, active in reps:
        await add_rep(uow, rep_id=rep_id, name=rep_id.title(), email=f"{rep_id}@baton.test", active=active)


async def test_leads_take_turns_in_rep_id_order_skipping_inactive_reps(uow: UnitOfWork) -> None:
    await _add_reps(uow, ("rep-c", True), ("rep-a", True), ("rep-b", False))
    await _route(uow, "lead-1", "lead-2", "lead-3")
    assert [routed.rep_id for routed in await _routed(uow)] == ["rep-a", "rep-c", "rep-a"]


async def test_decision_is_stored_with_its_reason_and_the_skipped_reps(uow: UnitOfWork) -> None:
    await _add_reps(uow, ("rep-a", True), ("rep-b", False))
    await _route(uow, "lead-1")
    async with uow.read() as session:
        stored = await store.load_assignment(session, lead_id="lead-1")
    [routed] = await _routed(uow)
    assert stored is not None
    assert (stored["assignment_id"], stored["kind"], stored["rep_id"]) == (routed.assignment_id, "assigned", "rep-a")
    assert stored["reason"] == routed.reason
    assert routed.reason.endswith("; score 70 (qualified)")
    assert stored["details"] == {"pool": "default", "skipped": [["rep-b", "inactive"]]}


async def test_lead_already_routed_is_left_as_it_is(uow: UnitOfWork) -> None:
    await _add_reps(uow, ("rep-a", True), ("rep-b", True))
    await _route(uow, "lead-1", "lead-1", "lead-2")
    assert [(routed.lead_id, routed.rep_id) for routed in await _routed(uow)] == [
        ("lead-1", "rep-a"),
        ("lead-2", "rep-b"),
    ]


async def test_without_active_reps_the_lead_waits_and_the_turn_does_not_move(uow: UnitOfWork) -> None:
    await _add_reps(uow, ("rep-a", False))
    await _route(uow, "lead-1")
    [routed] = await _routed(uow)
    assert (routed.kind, routed.rep_id, routed.rep_name) == ("unassigned", None, None)
    async with uow.read() as session:
        assert await store.lock_rotation(session, pool=store.DEFAULT_POOL) is None


async def test_duplicate_rep_is_refused(uow: UnitOfWork) -> None:
    await _add_reps(uow, ("rep-a", True))
    with pytest.raises(IntegrityError):
        await add_rep(uow, rep_id="rep-z", name="Z", email="rep-a@baton.test", active=True)
    with pytest.raises(IntegrityError):
        await add_rep(uow, rep_id="rep-a", name="A", email="other@baton.test", active=True)


async def test_rep_without_an_id_gets_one(uow: UnitOfWork) -> None:
    rep_id = await add_rep(uow, rep_id=None, name="Ada", email="ada@baton.test", active=True)
    async with uow.read() as session:
        assert [rep.rep_id for rep in await store.load_reps(session)] == [rep_id]
