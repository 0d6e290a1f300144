"""Routing a run of scored leads at once changes exactly what routing them one by one, in order, changes: the same
rep per lead, turns, loads, queues, SLA deadlines, history and events — and when another replica takes capacity
mid-run, the run falls back to the lead-by-lead path."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import CACHE_HIT

from services.routing import admin, store, webhooks
from services.routing.handlers import HANDLERS
from services.routing.reps import Load, Rep, has_room
from services.routing.rules import RoutingPolicy
from services.routing.runs import route_scored_leads
from services.routing.schemas import RepIn
from services.routing.service import route_scored_lead
from shared.consumer import Batched
from shared.db import make_engine
from shared.events import LeadRoutedV1, LeadScoredV1, parse_payload
from shared.privacy import mark_erased
from shared.topics import LEADS_SCORED
from shared.uow import Transaction, UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events

NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
POLICY = {
    "rules": [
        {"id": "japan", "when": [{"field": "country", "op": "equals", "value": "JP"}], "team": "apac"},
        {"id": "qualified", "when": [{"field": "score", "op": "range", "min": 50}]},
    ],
    "sla_minutes": {"A": 5, "B": 60, "default": 240},
}
REPS: dict[str, dict[str, Any]] = {
    "rep-a": {"team": "apac", "weight": 2, "max_open": 3},
    "rep-b": {"team": "apac", "max_per_day": 2, "timezone": "Asia/Tokyo"},
    "rep-c": {"weight": 3, "max_open": 4},
    "rep-d": {"team": "apac", "active": False},
    "rep-owner": {"max_open": 2},
}
Routes = Callable[[UnitOfWork, Sequence[LeadScoredV1]], Awaitable[None]]


def _scored(lead_id: str, score: int = 70, grade: str = "A2", **lead: Any) -> LeadScoredV1:
    return LeadScoredV1(
        lead_id=lead_id, score=score, verdict="qualified" if score >= 50 else "nurture", model_version="1",
        contributions=(), scored_at=NOW, grade=grade, company_domain=lead.pop("domain", None),
        lead={"lead_id": lead_id, "email": f"{lead_id}@example.com", **lead},
    )  # fmt: skip


def _run() -> list[LeadScoredV1]:
    """Forty-odd leads: Japanese ones for team apac, qualified ones for everyone, nurture ones matching no rule,
    some from an account with an owner; caps fill up part way, repeats and re-scores of stored leads."""
    run = [_scored("twice-assigned", country="JP"), _scored("twice-queued", score=30)]
    for n in range(36):
        grade = "AB"[n % 2] + "12"[n % 3 % 2]
        domain = "acme.example" if n % 5 == 0 else None
        country = "JP" if n % 3 == 0 else "DE"
        run.append(_scored(f"lead-{n:02d}", score=40 + n % 7 * 10, grade=grade, domain=domain, country=country))
        if n == 11:
            run += [_scored("twice-assigned", score=99, country="JP"), _scored("twice-queued", score=45)]
        if n == 20:
            run += [_scored("stored-queued", score=44), _scored("stored-assigned", score=12)]
    return [*run, _scored("erased", country="JP"), _scored("twice-queued", score=47), _scored("stored-queued", 48)]


async def _staged(tmp_path: Path, name: str) -> UnitOfWork:
    """A routing database with reps, a policy, an account owner, webhook subscriptions, an erased lead and three
    leads routed before the run (one waits in the queue)."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db", schema=name)
    uow = await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")
    for rep_id, fields in REPS.items():
        rep = RepIn.model_validate({"name": rep_id.title(), "email": f"{rep_id}@baton.example", **fields})
        await admin.save_rep(uow, rep, rep_id=rep_id)
    policy = RoutingPolicy.model_validate(POLICY)
    await admin.activate_policy(uow, version=await admin.create_policy(uow, name="run", policy=policy))
    async with uow.transaction() as tx:
        await store.upsert_account(tx.session, domain="acme.example", rep_id="rep-owner", name="ACME", now=NOW)
        await mark_erased(tx.session, store.metadata, lead_id="erased")
        for url, team, kinds in (("https://all.example", None, []), ("https://apac.example", "apac", ["assigned"])):
            await webhooks.add_subscription(tx.session, url=url, team=team, rep_id=None, kinds=kinds, now=NOW)
    stored = [_scored("stored-queued", score=20), _scored("stored-assigned", country="JP"), _scored("stored-de")]
    await _one_by_one(uow, stored)  # and both pools have their turn rows
    return uow


async def _one_by_one(uow: UnitOfWork, run: Sequence[LeadScoredV1]) -> None:
    for scored in run:
        async with uow.transaction() as tx:
            await route_scored_lead(tx, scored, now=NOW)


def _in_runs_of(size: int) -> Routes:
    async def routes(uow: UnitOfWork, run: Sequence[LeadScoredV1]) -> None:
        for start in range(0, len(run), size):
            async with uow.transaction() as tx:
                await route_scored_leads(tx, run[start : start + size], now=NOW)

    return routes


def _without_ids(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key != "assignment_id"}


async def _snapshot(uow: UnitOfWork) -> dict[str, Any]:
    """Everything routing stores and announces, without the random ids and wall-clock times it adds."""
    async with uow.read() as session:

        async def rows(table: Any, *order: Any) -> list[dict[str, Any]]:
            return [dict(row) for row in (await session.execute(select(table).order_by(*order))).mappings()]

        assignments = [_without_ids(row) for row in await rows(store.assignments, store.assignments.c.lead_id)]
        history = [_without_ids(row) | {"id": None} for row in await rows(store.decisions, store.decisions.c.id)]
        loads = await rows(store.rep_loads, store.rep_loads.c.rep_id)
        turns = await rows(store.rotations, store.rotations.c.pool)
        urls = {row["subscription_id"]: row["url"] for row in await webhooks.list_subscriptions(session)}
        deliveries = sorted(
            (urls[row["subscription_id"]], row["lead_id"], row["event"]["type"], _without_ids(row["event"]["data"]))
            for row in await rows(store.webhook_deliveries, store.webhook_deliveries.c.lead_id)
        )
        stream = [
            (row["lead_id"], row["rep_id"], row["team"], _without_ids(row["event"]["data"]))
            for row in await rows(store.stream_events, store.stream_events.c.seq)
        ]
    events = [
        (event.type, event.subject, _without_ids(event.data)) for event in await outbox_events(uow, store.metadata)
    ]
    return {"assignments": assignments, "history": history, "loads": loads, "turns": turns,
            "deliveries": deliveries, "stream": stream, "events": events}  # fmt: skip


async def _routed(uow: UnitOfWork) -> list[LeadRoutedV1]:
    return [parse_payload(event, LeadRoutedV1) for event in await outbox_events(uow, store.metadata)]


@pytest.mark.parametrize("run_size", [1, 7, 100])
async def test_a_run_of_leads_routes_exactly_as_one_by_one(tmp_path: Path, run_size: int) -> None:
    one_by_one, batched = await _staged(tmp_path, "one_by_one"), await _staged(tmp_path, "batched")
    await _one_by_one(one_by_one, _run())
    await _in_runs_of(run_size)(batched, _run())
    expected, got = await _snapshot(one_by_one), await _snapshot(batched)
    assert got == expected
    # The run covered what it claims to: caps filled up (leads queue), the account owner took leads until full,
    # a lead queued earlier in the run waits with its latest score, an erased lead kept nothing personal.
    routed = await _routed(batched)
    kinds = {event.lead_id: event.kind for event in routed[3:]}
    assert list(kinds.values()).count("unassigned") > 5 and {"rep-a", "rep-b", "rep-c"} <= {e.rep_id for e in routed}
    assert any(e.rep_id == "rep-owner" for e in routed) and any("account owner unavailable" in e.reason for e in routed)
    queued_twice = next(row for row in got["assignments"] if row["lead_id"] == "twice-queued")
    assert (queued_twice["status"], queued_twice["score"], queued_twice["lead"]["score"]) == ("queued", 47, 47)
    stored_queued = next(row for row in got["assignments"] if row["lead_id"] == "stored-queued")
    assert stored_queued["score"] == 48
    assert "email" not in next(row for row in got["assignments"] if row["lead_id"] == "erased")["lead"]
    assert sum(1 for event in routed if event.lead_id == "twice-assigned") == 1
    assert [row["open_leads"] for row in got["loads"]] == [3, 2, 4, 0, 2]


async def test_the_consumer_hands_a_run_of_scored_leads_to_one_batched_call(tmp_path: Path) -> None:
    handler = HANDLERS[LeadScoredV1.EVENT_TYPE]
    assert isinstance(handler, Batched)
    uow = await _staged(tmp_path, "consumer")
    events = [scored.to_event(source="/baton/scoring") for scored in _run()]
    traces = {event.subject: [["ce_traceparent", f"00-{index:032x}-{index:016x}-01"]] for index, event in
              enumerate(events, start=1)}  # fmt: skip
    async with uow.transaction() as tx:
        await tx.mark_all_processed([(event.id, LEADS_SCORED) for event in events])
        tx.traces_by_lead = traces  # as the consumer sets it while the run is applied
        await handler.apply_run(tx, events)
    outbox = store.metadata.tables["outbox"]
    async with uow.read() as session:
        rows = (await session.execute(select(outbox).order_by(outbox.c.id))).all()
    routed = [(row.message_key.decode(), dict(row.headers)) for row in rows]
    assert len(routed) == 3 + 36 + 3  # staged, the run's leads, the first of each repeat and the erased lead
    stored = {"stored-queued", "stored-assigned"}  # routed before the run: only re-scored
    assert {lead_id for lead_id, _ in routed[3:]} == {scored.lead_id for scored in _run()} - stored
    # Each lead's leads.routed continues the trace of the leads.scored event that caused it.
    assert all(headers["ce_traceparent"] == traces[lead_id][0][1] for lead_id, headers in routed[3:])


@pytest.mark.parametrize("run", [_run()[:12], [_scored("lead-alone", country="DE")]], ids=["many reps", "one rep"])
async def test_capacity_taken_by_another_replica_mid_run_routes_the_run_lead_by_lead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, run: list[LeadScoredV1]
) -> None:
    caplog.set_level(logging.INFO, logger="services.routing.runs")
    reference, batched = await _staged(tmp_path, "reference"), await _staged(tmp_path, "batched")
    await _fill(reference, "rep-a")
    read_roster = store.load_roster

    async def roster_then_another_replica_fills_rep_a(session: Any) -> tuple[list[Rep], dict[str, Load]]:
        roster = await read_roster(session)
        monkeypatch.setattr(store, "load_roster", read_roster)
        await _fill(batched, "rep-a")  # committed by another connection after this run read the roster
        return roster

    monkeypatch.setattr(store, "load_roster", roster_then_another_replica_fills_rep_a)
    await _in_runs_of(len(run))(batched, run)
    await _one_by_one(reference, run)
    assert "routing a run of" in caplog.text  # the run gave rep-a leads it no longer had room for
    got = await _snapshot(batched)
    assert got == await _snapshot(reference)
    assert next(row for row in got["loads"] if row["rep_id"] == "rep-a")["open_leads"] == 3


async def _fill(uow: UnitOfWork, rep_id: str) -> None:
    """Another replica gives the rep leads up to their cap."""
    cap = REPS[rep_id]["max_open"]
    async with uow.transaction() as tx:
        await tx.session.execute(
            update(store.rep_loads).where(store.rep_loads.c.rep_id == rep_id).values(open_leads=cap)
        )


@pytest.mark.parametrize(
    ("open_leads", "day", "new_on_day"),
    [(0, None, 0), (1, "2026-05-04", 1), (2, "2026-05-03", 2), (3, "2026-05-04", 0), (0, "2026-05-04", 2)],
)
async def test_claiming_several_leads_at_once_counts_as_claiming_them_one_at_a_time(
    tmp_path: Path, open_leads: int, day: str | None, new_on_day: int
) -> None:
    uow = await _staged(tmp_path, "claims")
    today = NOW.date()
    start = Load(open_leads, datetime.fromisoformat(day).date() if day else None, new_on_day)
    for rep, count in product(
        (Rep("rep-z", "Z", max_open=4, max_per_day=2), Rep("rep-z", "Z", max_per_day=0)), (1, 2, 3)
    ):
        async with uow.transaction() as tx:
            await _load(tx, start)
            singles = [await store.claim_capacity(tx.session, rep, today=today) for _ in range(count)]
            one_at_a_time = await store.lock_loads(tx.session, rep_ids=["rep-z"])
            await _load(tx, start)
            claimed = await store.claim_capacity(tx.session, rep, today=today, count=count)
            at_once = await store.lock_loads(tx.session, rep_ids=["rep-z"])
            await _load(tx, start)
            locked = (await store.lock_loads(tx.session, rep_ids=["rep-z"]))["rep-z"]
            await store.count_claims(tx.session, [("rep-z", today, count, locked)])  # a run's, checked beforehand
            counted = await store.lock_loads(tx.session, rep_ids=["rep-z"])
            await tx.session.execute(store.rep_loads.delete().where(store.rep_loads.c.rep_id == "rep-z"))
        assert claimed == all(singles) == has_room(rep, start, today, count)
        if claimed:
            assert at_once == one_at_a_time == counted == {"rep-z": start.with_new_leads(today, count)}


async def _load(tx: Transaction, load: Load) -> None:
    day = load.day.isoformat() if load.day else None
    await tx.session.execute(store.rep_loads.delete().where(store.rep_loads.c.rep_id == "rep-z"))
    await tx.session.execute(store.rep_loads.insert().values(
        rep_id="rep-z", open_leads=load.open_leads, day=day, new_on_day=load.new_on_day, sla_misses=0))  # fmt: skip


async def test_a_run_reads_its_leads_erasures_states_owners_and_the_policy_in_one_statement(tmp_path: Path) -> None:
    uow = await _staged(tmp_path, "statements")
    async with uow.transaction() as tx:  # the policy's definition is read once per version
        await route_scored_leads(tx, [_scored("first-run")])
    counted: list[str] = []

    def count(*args: Any) -> None:
        counted.append(args[2])

    event.listen(Engine, "before_cursor_execute", count)  # every engine: the one of this test's database
    try:
        async with uow.transaction() as tx:
            run = [_scored("erased", country="JP"), _scored("stored-de"), _scored("new", domain="acme.example")]
            await route_scored_leads(tx, run)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    reads = [statement for statement in counted if any(f"FROM {table}" in statement
             for table in ("erased_leads", "assignments", "accounts", "routing_policies"))]  # fmt: skip
    assert len(reads) == 1, reads
    statements = [statement for statement in counted if not statement.startswith(("BEGIN", "COMMIT"))]
    assert not [statement for statement in statements if statement.startswith("SELECT rotations")]  # in the one read
    assert len(statements) <= 11, statements  # 16 before the reads were one


async def test_a_run_reads_no_webhook_subscription_when_none_is_active(tmp_path: Path) -> None:
    uow = await _staged(tmp_path, "unsubscribed")
    async with uow.transaction() as tx:
        for subscription in await webhooks.list_subscriptions(tx.session):
            await webhooks.delete_subscription(tx.session, subscription_id=subscription["subscription_id"])
    counted: list[str] = []

    def count(*args: Any) -> None:
        counted.append(args[2])

    event.listen(Engine, "before_cursor_execute", count)
    try:
        async with uow.transaction() as tx:
            await route_scored_leads(tx, [_scored("unwatched", country="JP"), _scored("unwatched-de")])
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert [statement for statement in counted if "webhook_subscriptions" in statement] == [
        statement for statement in counted if statement.startswith("WITH locked_statuses")
    ]  # asked about in the run's one read, and not read again
    async with uow.transaction() as tx:
        routed = (await tx.session.execute(select(store.assignments.c.lead_id, store.assignments.c.rep_id))).all()
        assert {lead_id for lead_id, rep_id in routed if rep_id} >= {"unwatched", "unwatched-de"}


async def test_a_run_reuses_every_statement_compiled_by_the_run_before(tmp_path: Path) -> None:
    # Compiling a statement costs about what running it does: none may lack the cache key that reuses it.
    uow = await _staged(tmp_path, "compiled")
    async with uow.transaction() as tx:
        await route_scored_leads(tx, [_scored("first-run"), _scored("first-de", country="DE")])
    reused: list[tuple[str, Any]] = []

    def note(*args: Any) -> None:
        reused.append((args[2], args[4].cache_hit))

    event.listen(Engine, "after_cursor_execute", note)
    try:
        async with uow.transaction() as tx:
            await route_scored_leads(tx, [_scored("second-run"), _scored("second-de", country="DE")])
    finally:
        event.remove(Engine, "after_cursor_execute", note)
    compiled_again = [statement for statement, hit in reused if hit is not CACHE_HIT]
    assert reused and not compiled_again, compiled_again


async def test_a_run_follows_the_policy_activated_since_the_run_before(tmp_path: Path) -> None:
    uow = await _staged(tmp_path, "policies")
    async with uow.transaction() as tx:
        await route_scored_leads(tx, [_scored("before", country="DE")])
    nobody = RoutingPolicy.model_validate({"rules": [{"id": "never", "when": [{"field": "score", "op": "range",
                                                                                "min": 1000}]}]})  # fmt: skip
    await admin.activate_policy(uow, version=await admin.create_policy(uow, name="nobody", policy=nobody))
    async with uow.transaction() as tx:
        await route_scored_leads(tx, [_scored("after", country="DE")])
    kinds = {routed.lead_id: routed.kind for routed in await _routed(uow)}
    assert (kinds["before"], kinds["after"]) == ("assigned", "unassigned")
