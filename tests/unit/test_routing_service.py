"""Routing use cases on a real (SQLite) database: assignment, queues, capacity, SLA timers, accept and reject."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import admin, store
from services.routing.rules import RoutingPolicy
from services.routing.schemas import RepIn
from services.routing.service import (
    accept_lead,
    apply_outcome,
    assign_queued_leads,
    fire_due_sla_timers,
    reject_lead,
    route_scored_lead,
    simulate,
)
from shared.events import LeadRoutedV1, LeadScoredV1, OutcomeRecordedV1, parse_payload
from shared.problems import ProblemError
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")


def _scored(lead_id: str, score: int = 70, grade: str = "A2", **lead: Any) -> LeadScoredV1:
    return LeadScoredV1(
        lead_id=lead_id, score=score, verdict="qualified" if score >= 50 else "nurture", model_version="1",
        contributions=(), scored_at=datetime(2026, 5, 1, tzinfo=UTC), grade=grade,
        lead={"lead_id": lead_id, "email": f"{lead_id}@example.com", **lead},
    )  # fmt: skip


async def _route(uow: UnitOfWork, *leads: LeadScoredV1 | str) -> None:
    for lead in leads:
        async with uow.transaction() as tx:
            await route_scored_lead(tx, _scored(lead) if isinstance(lead, str) else lead)


async def _routed(uow: UnitOfWork) -> list[LeadRoutedV1]:
    return [parse_payload(event, LeadRoutedV1) for event in await outbox_events(uow, store.metadata)]


async def _rep(uow: UnitOfWork, rep_id: str, **fields: Any) -> None:
    await admin.save_rep(uow, RepIn.model_validate({"name": rep_id.title(), "email": f"{rep_id}@baton.example",
                                                    **fields}), rep_id=rep_id)  # fmt: skip


async def _state(uow: UnitOfWork, lead_id: str) -> dict[str, Any]:
    async with uow.read() as session:
        found = await store.load_assignment(session, lead_id=lead_id)
    assert found is not None
    return found


async def _outcome(uow: UnitOfWork, lead_id: str, kind: str) -> None:
    outcome = OutcomeRecordedV1(lead_id=lead_id, outcome_id=f"o-{lead_id}-{kind}", kind=kind,
                                occurred_at=datetime.now(UTC))  # fmt: skip
    async with uow.transaction() as tx:
        await apply_outcome(tx, outcome)


async def test_leads_take_weighted_turns_and_each_decision_is_announced_and_explained(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-c", weight=2)
    await _rep(uow, "rep-a")
    await _rep(uow, "rep-b", active=False)
    await _route(uow, "lead-1", "lead-2", "lead-3")
    routed = await _routed(uow)
    assert [event.rep_id for event in routed] == ["rep-c", "rep-a", "rep-c"]
    assert {event.kind for event in routed} == {"assigned"}
    first = await _state(uow, "lead-1")
    assert (first["status"], first["rule"], first["pool"]) == ("assigned", "everyone", "all")
    assert first["details"]["candidates"] == [
        {"rep_id": "rep-c", "name": "Rep-C", "verdict": "chosen", "reason": "weight 2, next in weighted round robin"},
        {"rep_id": "rep-a", "name": "Rep-A", "verdict": "eligible", "reason": "eligible, not their turn"},
        {"rep_id": "rep-b", "name": "Rep-B", "verdict": "skipped", "reason": "inactive"},
    ]
    assert routed[0].lead["email"] == "lead-1@example.com" and routed[0].sla_deadline is not None


async def test_a_rescore_of_a_routed_lead_changes_nothing(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a")
    await _rep(uow, "rep-b")
    await _route(uow, "lead-1", _scored("lead-1", score=90), "lead-2")
    assert [(event.lead_id, event.rep_id) for event in await _routed(uow)] == [("lead-1", "rep-a"), ("lead-2", "rep-b")]


async def test_the_account_owner_gets_leads_from_their_company(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a")
    await _rep(uow, "rep-b")
    async with uow.transaction() as tx:
        await store.upsert_account(tx.session, domain="acme.co.jp", rep_id="rep-b", name="ACME", now=datetime.now(UTC))
    await _route(uow, _scored("lead-1", company_domain="acme.co.jp"))
    [event] = await _routed(uow)
    assert (event.rep_id, event.reason) == ("rep-b", "Rep-B owns the account acme.co.jp")


async def test_capacity_full_queues_the_lead_until_an_outcome_frees_a_slot(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a", max_open=1)
    await _route(uow, "lead-1", "lead-2")
    assert [(event.kind, event.rep_id) for event in await _routed(uow)] == [("assigned", "rep-a"), ("unassigned", None)]
    assert (await _state(uow, "lead-2"))["status"] == "queued"
    assert await assign_queued_leads(uow) == 0  # still full: no event, no change
    assert len(await _routed(uow)) == 2
    await _outcome(uow, "lead-1", "won")
    assert await assign_queued_leads(uow) == 1
    last = (await _routed(uow))[-1]
    assert (last.lead_id, last.kind, last.rep_id) == ("lead-2", "assigned", "rep-a")
    assert "a rep became available" in last.reason


async def test_daily_cap_counts_new_leads_per_day(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a", max_per_day=2)
    await _rep(uow, "rep-b", weight=100, active=False)
    await _route(uow, "lead-1", "lead-2", "lead-3")
    assert [event.kind for event in await _routed(uow)] == ["assigned", "assigned", "unassigned"]
    third = await _state(uow, "lead-3")
    assert third["details"]["candidates"][0]["reason"].startswith("daily cap reached: 2 of 2")


async def test_a_missed_sla_reassigns_the_lead_records_the_miss_and_escalates_after_n(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a", manager="boss@baton.example")
    await _rep(uow, "rep-b")
    policy = RoutingPolicy.model_validate({"rules": [{"id": "all"}], "escalate_after_misses": 1})
    await admin.activate_policy(uow, version=await admin.create_policy(uow, name="strict", policy=policy))
    await _route(uow, "lead-1")
    assert await fire_due_sla_timers(uow) == 0  # not due yet
    later = datetime.now(UTC) + timedelta(minutes=6)  # grade A: 5 minutes
    assert await fire_due_sla_timers(uow, now=later) == 1
    assert await fire_due_sla_timers(uow, now=later) == 0  # fires once
    kinds = [(event.kind, event.rep_id, event.previous_rep_id) for event in await _routed(uow)]
    assert kinds == [
        ("assigned", "rep-a", None),
        ("sla_breached", "rep-a", "rep-a"),
        ("escalated", "rep-a", None),
        ("reassigned", "rep-b", "rep-a"),
    ]
    escalated = (await _routed(uow))[2]
    assert escalated.manager == "boss@baton.example"
    state = await _state(uow, "lead-1")
    assert (state["rep_id"], state["tried"]) == ("rep-b", ["rep-a"])
    async with uow.read() as session:
        loads = {row["rep_id"]: (row["open_leads"], row["sla_misses"]) for row in await store.list_reps(session)}
    assert loads == {"rep-a": (0, 1), "rep-b": (1, 0)}


async def test_an_accepted_lead_never_breaches(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a")
    await _route(uow, "lead-1")
    state = await accept_lead(uow, lead_id="lead-1", rep_id="rep-a")
    assert state["status"] == "accepted"
    await accept_lead(uow, lead_id="lead-1", rep_id="rep-a")  # twice is harmless
    assert await fire_due_sla_timers(uow, now=datetime.now(UTC) + timedelta(days=2)) == 0
    assert [event.kind for event in await _routed(uow)] == ["assigned", "accepted"]


async def test_someone_else_cannot_accept_and_a_queued_lead_cannot_be_accepted(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a", max_open=1)
    await _route(uow, "lead-1", "lead-2")
    with pytest.raises(ProblemError) as other:
        await accept_lead(uow, lead_id="lead-1", rep_id="rep-z")
    assert other.value.status == 409 and "assigned to rep-a, not rep-z" in other.value.detail
    with pytest.raises(ProblemError) as queued:
        await accept_lead(uow, lead_id="lead-2", rep_id=None)
    assert queued.value.status == 409 and "queued" in queued.value.detail


async def test_a_rejected_lead_goes_to_someone_else_and_never_back(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a")
    await _rep(uow, "rep-b")
    await _route(uow, "lead-1")
    state = await reject_lead(uow, lead_id="lead-1", rep_id="rep-a", reason="wrong region")
    assert (state["rep_id"], state["tried"]) == ("rep-b", ["rep-a"])
    state = await reject_lead(uow, lead_id="lead-1", rep_id="rep-b", reason="not my segment")
    assert (state["status"], state["rep_id"]) == ("queued", None)
    last = (await _routed(uow))[-1]
    assert last.kind == "unassigned" and last.reason.startswith("rejected by rep-b: not my segment")


async def test_an_accepted_outcome_from_a_sales_tool_stops_the_timer(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a")
    await _route(uow, "lead-1")
    await _outcome(uow, "lead-1", "accepted")
    assert (await _state(uow, "lead-1"))["status"] == "accepted"


async def test_simulation_explains_without_assigning_or_taking_a_turn(uow: UnitOfWork) -> None:
    await _rep(uow, "rep-a")
    await _rep(uow, "rep-b")
    answer = await simulate(uow, {"lead_id": "what-if", "score": 80, "grade": "A1", "verdict": "qualified"})
    again = await simulate(uow, {"lead_id": "what-if", "score": 80, "grade": "A1", "verdict": "qualified"})
    assert answer["rep_id"] == again["rep_id"] == "rep-a"
    assert answer["kind"] == "assigned" and answer["rule"] == "everyone" and len(answer["candidates"]) == 2
    assert await _routed(uow) == []
