"""Routing on real PostgreSQL with two replicas (two engines, as two processes would have): caps are never
exceeded under concurrent assignment, with locks or optimistically, and an SLA timer fires once, after a restart,
whoever runs it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.routing import admin, store
from services.routing.rules import RoutingPolicy
from services.routing.runs import route_scored_leads
from services.routing.schemas import RepIn
from services.routing.service import fire_due_sla_timers, route_scored_lead
from shared.db import make_engine, migrate
from shared.events import LeadRoutedV1, LeadScoredV1
from shared.failures import is_outage
from shared.privacy import mark_erased
from shared.sessions import make_sessions
from shared.uow import UnitOfWork
from shared.writes import send_writes
from tests.support.polling import eventually
from tests.support.server_log import ServerLog

Replicas = tuple[UnitOfWork, UnitOfWork]
assignments = store.metadata.tables["assignments"]


@pytest.fixture
async def schema(database_url: str) -> str:
    """A fresh routing schema, migrated."""
    return await _migrated_schema(database_url)


async def _migrated_schema(database_url: str) -> str:
    name = f"routing_{uuid.uuid4().hex[:8]}"
    engine = make_engine(database_url, schema=name)
    await migrate(engine, store.MIGRATIONS, schema=name)
    await engine.dispose()
    return name


@contextlib.asynccontextmanager
async def _replicas(database_url: str, schema: str) -> AsyncIterator[Replicas]:
    """Two units of work on one routing schema, each with its own engine and pool, as two processes have."""
    engines = [make_engine(database_url, schema=schema) for _ in range(2)]
    try:
        # with a relay in the process, as the service has: outbox rows go with the other writes
        first, second = (
            UnitOfWork(make_sessions(engine), store.metadata, source="/baton/routing", hand_over=lambda _: None)
            for engine in engines
        )
        yield first, second
    finally:
        for engine in engines:
            await engine.dispose()


def _scored(lead_id: str, **lead: Any) -> LeadScoredV1:
    return LeadScoredV1(
        lead_id=lead_id, score=80, verdict="qualified", model_version="1", contributions=(),
        scored_at=datetime.now(UTC), grade="A1", lead={"lead_id": lead_id, "email": f"{lead_id}@example.com", **lead},
    )  # fmt: skip


async def _with_retries(work: Callable[[], Awaitable[None]]) -> None:
    """What the consumer does: a transaction that lost a conflict (deadlock, duplicate delivery) is tried again."""
    for attempt in range(20):
        try:
            await work()
            return
        except Exception as exc:
            if not is_outage(exc) and "duplicate key" not in str(exc):
                raise
            await asyncio.sleep(0.01 * (attempt + 1))  # poll: back off before the retry, as the consumer does
    raise AssertionError("a transaction kept failing")


async def _route(uow: UnitOfWork, scored: LeadScoredV1) -> None:
    async def work() -> None:
        async with uow.transaction() as tx:
            await route_scored_lead(tx, scored)

    await _with_retries(work)


async def _route_run(uow: UnitOfWork, run: list[LeadScoredV1], *, optimistic: bool = True) -> None:
    """What the consumer does with a run of scored leads: optimistically first; if that fails its commit (what it
    read changed), again with locks."""

    async def work() -> None:
        try:
            async with uow.transaction() as tx:
                tx.optimistic = optimistic
                await route_scored_leads(tx, run)
        except IntegrityError:
            async with uow.transaction() as tx:
                await route_scored_leads(tx, run)

    await _with_retries(work)


async def _events(uow: UnitOfWork) -> list[LeadRoutedV1]:
    async with uow.read() as session:
        outbox = store.metadata.tables["outbox"]
        rows = (await session.execute(select(outbox.c.value).order_by(outbox.c.id))).scalars().all()
    return [LeadRoutedV1.model_validate_json(value) for value in rows]


async def test_concurrent_assignment_on_two_replicas_never_exceeds_a_cap(database_url: str, schema: str) -> None:
    caps = {"rep-a": 4, "rep-b": 3, "rep-c": 3}
    async with _replicas(database_url, schema) as (first, second):
        for rep_id, cap in caps.items():
            weight = 3 if rep_id == "rep-a" else 1
            await admin.save_rep(first, RepIn(name=rep_id, email=f"{rep_id}@example.com", max_open=cap, weight=weight),
                                 rep_id=rep_id)  # fmt: skip
        async with first.transaction() as tx:
            await store.upsert_account(tx.session, domain="acme.example", rep_id="rep-a", name=None,
                                       now=datetime.now(UTC))  # fmt: skip
        # 60 leads, a third from rep-a's account (a path that skips the pool's lock), each delivered to both
        # replicas at once, as a rebalance can.
        leads = [_scored(f"lead-{n}", company_domain="acme.example" if n % 3 == 0 else None) for n in range(60)]
        await asyncio.gather(*(_route(replica, lead) for lead in leads for replica in (first, second)))
        statuses = await _one_state_per_lead_and_caps_filled(first, caps, [lead.lead_id for lead in leads])
    assert statuses.count("queued") == 50


async def _one_state_per_lead_and_caps_filled(uow: UnitOfWork, caps: dict[str, int], lead_ids: list[str]) -> list[str]:
    """Check that each lead has one routing state and one first decision announced, and that each rep holds as
    many leads as their cap and their load says; the states' statuses."""
    async with uow.read() as session:
        states = (await session.execute(select(store.assignments))).mappings().all()
        loads = {row["rep_id"]: row["open_leads"] for row in await store.list_reps(session)}
    events = await _events(uow)
    assert sorted(row["lead_id"] for row in states) == sorted(lead_ids)  # one routing state per lead, never two
    assert Counter(row["rep_id"] for row in states if row["status"] == "assigned") == caps == loads
    first_decisions = [event.lead_id for event in events if event.kind in ("assigned", "unassigned")]
    assert sorted(first_decisions) == sorted(lead_ids)
    return [row["status"] for row in states]


async def test_an_sla_timer_fires_once_after_a_restart_with_two_replicas_racing(database_url: str, schema: str) -> None:
    async with _replicas(database_url, schema) as (first, _):
        for rep_id in ("rep-a", "rep-b"):
            await admin.save_rep(first, RepIn(name=rep_id, email=f"{rep_id}@example.com"), rep_id=rep_id)
        policy = RoutingPolicy.model_validate({"rules": [{"id": "all"}], "sla_minutes": {"A": 1, "default": 60}})
        await admin.activate_policy(first, version=await admin.create_policy(first, name="fast", policy=policy))
        await _route(first, _scored("lead-sla"))

    # Both replicas restarted (new engines, nothing in memory); past the deadline they race for the timer.
    async with _replicas(database_url, schema) as (first, second):
        later = datetime.now(UTC) + timedelta(minutes=2)
        fired = await asyncio.gather(*(fire_due_sla_timers(replica, now=later) for replica in (first, second)))
        events = await _events(first)
    assert sum(fired) == 1
    assert [(event.kind, event.rep_id) for event in events] == [
        ("assigned", "rep-a"), ("sla_breached", "rep-a"), ("reassigned", "rep-b")]  # fmt: skip


async def test_a_runs_one_read_finds_erased_leads_owners_and_locks_the_routed_ones_not_the_turns(
    database_url: str, schema: str
) -> None:
    """Erased leads, routing states, account owners, the active policy, the pools' turns and whether anyone
    subscribed to webhooks come in one round trip; the states' rows stay locked to the commit, as a replica routing
    the same lead meanwhile must wait, but not the turns' (a run locks them once decided, and adds to them)."""
    now = datetime.now(UTC)
    async with _replicas(database_url, schema) as (first, second):
        await _route(first, _scored("lead-routed"))
        async with first.transaction() as tx:
            await mark_erased(tx.session, store.metadata, lead_id="lead-erased")
            await store.upsert_account(tx.session, domain="acme.example", rep_id="rep-owner", name="ACME", now=now)
        async with first.transaction() as tx:
            pools = list((await tx.session.execute(select(store.rotations.c.pool))).scalars())
        assert pools  # the routed lead's pool has its turns
        async with first.transaction() as tx:
            known = await store.read_run_leads(
                tx.session, lead_ids=["lead-erased", "lead-routed", "lead-new"], domains=["ACME.example", None],
                pools=[*pools, "pool-never-used"],
            )  # fmt: skip
            assert known.erased == {"lead-erased"}
            assert set(known.statuses) == {"lead-routed"}
            assert known.owners == {"acme.example": "rep-owner"}
            assert known.policy_version is None  # the default policy
            assert set(known.rotations) == set(pools) and not known.subscribed
            async with second.transaction() as other:
                await other.session.execute(text("SET LOCAL lock_timeout = '200ms'"))
                locked = await other.session.execute(
                    select(store.rotations.c.pool).where(store.rotations.c.pool == pools[0]).with_for_update()
                )
                assert locked.scalars().all() == [pools[0]]
            async with second.transaction() as other:
                await other.session.execute(text("SET LOCAL lock_timeout = '200ms'"))
                with pytest.raises(DBAPIError, match="lock"):
                    await other.session.execute(
                        select(assignments.c.lead_id).where(assignments.c.lead_id == "lead-routed").with_for_update()
                    )


async def test_a_runs_one_read_brings_the_roster_as_load_roster_reads_it(database_url: str, schema: str) -> None:
    """On PostgreSQL the run's read also carries every rep with their load, field for field what `load_roster`
    reads on its own (one round trip fewer per run)."""
    async with _replicas(database_url, schema) as (first, _):
        await admin.save_rep(first, RepIn(name="Ann", email="ann@example.com", team="emea", languages=["de", "en"],
                                          skills=["saas"], territories=["DE"], segments=["smb"], weight=3,
                                          max_open=5, max_per_day=2, timezone="Europe/Berlin",
                                          working_hours={"mon": [["09:00", "17:00"]]},
                                          out_of_office=[{"start": "2026-12-24T00:00:00+01:00",
                                                          "end": "2026-12-27T00:00:00+01:00"}]),
                             rep_id="rep-ann")  # fmt: skip
        await admin.save_rep(first, RepIn(name="Bo", email="bo@example.com", active=False), rep_id="rep-bo")
        async with first.transaction() as tx:
            [ann, _] = (await store.load_roster(tx.session))[0]
            assert await store.claim_capacity(tx.session, ann, today=datetime.now(UTC).date())
        async with first.transaction() as tx:
            known = await store.read_run_leads(tx.session, lead_ids=["lead-2"], domains=[])
            reps, loads = await store.load_roster(tx.session)
    assert known.roster == (reps, loads)
    assert [rep.rep_id for rep in reps] == ["rep-ann", "rep-bo"]
    assert loads["rep-ann"].open_leads == 1 and loads["rep-ann"].day is not None
    assert reps[0].hours is not None and reps[0].absences and reps[0].languages == {"de", "en"}


async def _routing_outcome(uow: UnitOfWork) -> tuple[Any, ...]:
    """Who got which lead (in lead order), each rep's load, each pool's turns and the decisions announced."""
    async with uow.read() as session:
        held = (await session.execute(select(assignments.c.lead_id, assignments.c.rep_id, assignments.c.status)
                                      .order_by(assignments.c.lead_id))).tuples().all()  # fmt: skip
        loads = {row["rep_id"]: (row["open_leads"], row["new_on_day"]) for row in await store.list_reps(session)}
        turns = (await session.execute(select(store.rotations).order_by(store.rotations.c.pool))).tuples().all()
    events = [(event.lead_id, event.kind, event.rep_id) for event in await _events(uow)]
    return held, loads, turns, events


CAPS = {"rep-a": 3, "rep-b": 2}


async def _two_reps_and_a_first_run(uow: UnitOfWork) -> None:
    """Reps with caps, and a first run: it learns the policy, whose pools the next runs read."""
    for rep_id, cap in CAPS.items():
        await admin.save_rep(uow, RepIn(name=rep_id, email=f"{rep_id}@example.com", max_open=cap), rep_id=rep_id)
    await _route_run(uow, [_scored("lead-00")])


async def test_an_optimistic_run_reads_once_writes_once_and_routes_as_one_with_locks(database_url: str) -> None:
    """Optimistically a run sends its read and one statement of writes: no BEGIN, no COMMIT, no lock. Routing the
    same leads with locks, on a twin schema, gives the same assignments, loads, turns and announcements."""
    outcomes = []
    for optimistic in (True, False):
        engine = make_engine(database_url, schema=await _migrated_schema(database_url))
        try:
            uow = UnitOfWork(make_sessions(engine), store.metadata, source="/baton/routing", hand_over=lambda _: None)
            await _two_reps_and_a_first_run(uow)
            server = ServerLog(engine)
            await _route_run(uow, [_scored(f"lead-{n:02}") for n in range(1, 6)], optimistic=optimistic)
            if optimistic:
                assert server.kinds() == ["SELECT", "WITH"], server.queries
            else:
                assert "BEGIN" in server.kinds()
            outcomes.append(await _routing_outcome(uow))
        finally:
            await engine.dispose()
    assert outcomes[0] == outcomes[1]
    held, loads, _, _ = outcomes[0]
    assert Counter(rep_id for _, rep_id, status in held if status == "assigned") == {"rep-a": 3, "rep-b": 2}
    assert loads == {"rep-a": (3, 3), "rep-b": (2, 2)}


async def _capacity_taken(other: UnitOfWork) -> None:
    async with other.transaction() as tx:
        for rep_id, cap in CAPS.items():  # every rep full
            await tx.session.execute(
                update(store.rep_loads).where(store.rep_loads.c.rep_id == rep_id).values(open_leads=cap)
            )


async def _lead_routed(other: UnitOfWork) -> None:
    await _route(other, _scored("lead-01"))


@pytest.mark.parametrize("meanwhile", [_capacity_taken, _lead_routed])
async def test_an_optimistic_run_whose_reads_changed_before_its_commit_fails_whole_and_routes_again_with_locks(
    database_url: str, schema: str, meanwhile: Callable[[UnitOfWork], Awaitable[None]]
) -> None:
    """Another replica takes a rep's last capacity, or routes one of the leads, between the run's read and its
    commit: the commit fails (IntegrityError) and nothing of the run stays; routed again with locks,
    as the consumer does next, every lead has one routing state and no cap is passed."""
    async with _replicas(database_url, schema) as (first, second):
        await _two_reps_and_a_first_run(first)
        before = await _routing_outcome(first)
        run = [_scored("lead-01"), _scored("lead-02")]
        with pytest.raises(IntegrityError):
            async with first.transaction() as tx:
                tx.optimistic = True
                await route_scored_leads(tx, run)
                await meanwhile(second)
        after_failure = await _routing_outcome(first)
        async with first.transaction() as tx:
            await route_scored_leads(tx, run)
        held, loads, _, events = await _routing_outcome(first)
    if meanwhile is not _lead_routed:
        assert after_failure[0] == before[0] and after_failure[3] == before[3]  # no state, no announcement added
    assert sorted(lead_id for lead_id, _, _ in held) == ["lead-00", "lead-01", "lead-02"]
    assert Counter(lead_id for lead_id, kind, _ in events if kind in ("assigned", "unassigned")) == {
        "lead-00": 1, "lead-01": 1, "lead-02": 1}  # fmt: skip
    assert all(open_leads <= CAPS[rep_id] for rep_id, (open_leads, _) in loads.items())


async def _reps_on_warm_replicas(replicas: Replicas, reps: dict[str, dict[str, int]]) -> None:
    """Reps (by id, with their profile's numbers), and a first run on each replica: it learns the policy, whose pools
    the next runs read."""
    for rep_id, numbers in reps.items():
        await admin.save_rep(replicas[0], RepIn(name=rep_id, email=f"{rep_id}@example.com", **numbers), rep_id=rep_id)
    for replica in replicas:
        await _route_run(replica, [_scored(f"lead-warm-{id(replica)}")], optimistic=False)


async def test_optimistic_runs_on_two_replicas_never_exceed_a_cap(database_url: str, schema: str) -> None:
    """Runs of five leads, each delivered to both replicas at once (as a rebalance can), routed optimistically and
    again with locks when that fails: one routing state per lead, and every cap exactly filled."""
    caps = {"rep-a": 4, "rep-b": 3, "rep-c": 3}
    async with _replicas(database_url, schema) as (first, second):
        await _reps_on_warm_replicas((first, second), {rep_id: {"max_open": cap} for rep_id, cap in caps.items()})
        leads = [_scored(f"lead-{n:02}") for n in range(60)]
        runs = [leads[start : start + 5] for start in range(0, 60, 5)]
        await asyncio.gather(*(_route_run(replica, run) for run in runs for replica in (first, second)))
        warm = [f"lead-warm-{id(replica)}" for replica in (first, second)]
        await _one_state_per_lead_and_caps_filled(first, caps, [*warm, *(lead.lead_id for lead in leads)])


async def test_optimistic_runs_of_two_replicas_on_one_pool_both_commit_and_every_turn_counts(
    database_url: str, schema: str
) -> None:
    """A replica takes turns of the pool another run read without locks and commits first: that run commits too, its
    turns added to the pool's totals, not written over them. Every pick counts: the totals are what the picks of both
    runs add up to (their sum stays 0, as smooth weighted round robin keeps it), and each rep's share of the leads
    is within a pick per run of its weight's."""
    weights = {"rep-a": 2, "rep-b": 1, "rep-c": 1}
    async with _replicas(database_url, schema) as (first, second):
        await _reps_on_warm_replicas((first, second), {rep_id: {"weight": w} for rep_id, w in weights.items()})
        async with first.read() as session:
            (before,) = (await session.execute(_TURNS_TAKEN)).scalars().all()
        async with first.transaction() as tx:  # reads, decides, keeps its writes
            tx.optimistic = True
            await route_scored_leads(tx, [_scored(f"lead-1-{n}") for n in range(5)])
            async with second.transaction() as other:  # and commits meanwhile, on the same totals
                other.optimistic = True
                await route_scored_leads(other, [_scored(f"lead-2-{n}") for n in range(6)])
        async with first.read() as session:
            (after,) = (await session.execute(_TURNS_TAKEN)).scalars().all()
        held, loads, _, _ = await _routing_outcome(first)
    assert sum(after.values()) == sum(before.values()) == 0
    assert after != before
    assigned = Counter(rep_id for lead_id, rep_id, status in held if status == "assigned" and "warm" not in lead_id)
    assert sum(assigned.values()) == 11  # both runs committed, every lead assigned once
    assert all(abs(assigned[rep_id] - 11 * weight / 4) <= 2 for rep_id, weight in weights.items()), assigned
    assert {rep_id: open_leads for rep_id, (open_leads, _) in loads.items()} == {
        rep_id: assigned[rep_id] + sum(1 for lead_id, owner, _ in held if owner == rep_id and "warm" in lead_id)
        for rep_id in weights
    }
    # The totals are the picks' own: replaying every pick from the totals before, in any order, gives them.
    replayed = dict(before)
    for lead_id, rep_id, status in held:
        if status == "assigned" and "warm" not in lead_id:
            for other_rep, weight in weights.items():
                replayed[other_rep] = replayed.get(other_rep, 0) + weight
            replayed[rep_id] -= sum(weights.values())
    assert after == replayed


async def test_a_run_with_locks_decides_while_another_holds_the_turns_and_every_turn_counts(
    database_url: str, schema: str
) -> None:
    """A run with locks (as after a failed optimistic one) reads and decides while another replica's run holds the
    pool's turns: it waits only for their lock, taken once it has decided, and adds its turns to what that run left.
    Every pick of both counts: the totals are their picks replayed."""
    weights = {"rep-a": 2, "rep-b": 1, "rep-c": 1}
    async with _replicas(database_url, schema) as (first, second):
        await _reps_on_warm_replicas((first, second), {rep_id: {"weight": w} for rep_id, w in weights.items()})
        async with first.read() as session:
            (before,) = (await session.execute(_TURNS_TAKEN)).scalars().all()
        async with second.transaction() as other:  # has taken turns, locked, and not committed yet
            await route_scored_leads(other, [_scored(f"lead-2-{n}") for n in range(6)])
            await send_writes(other.session)
            routing = asyncio.create_task(
                _route_run(first, [_scored(f"lead-1-{n}") for n in range(5)], optimistic=False)
            )
            await eventually(lambda: _waiting_on_a_lock(first), timeout=10, message="the run waits for the turns")
            waiting = await _queries_waiting_on_a_lock(first)
        await asyncio.wait_for(routing, 10)
        async with first.read() as session:
            (after,) = (await session.execute(_TURNS_TAKEN)).scalars().all()
        held, _, _, _ = await _routing_outcome(first)
    assert len(waiting) == 1 and "FROM rotations" in waiting[0] and "FOR UPDATE" in waiting[0], waiting
    assert "UNION" not in waiting[0]  # not the run's first read: that went by
    assigned = [(lead_id, rep_id) for lead_id, rep_id, status in held if status == "assigned" and "warm" not in lead_id]
    assert len(assigned) == 11
    replayed = dict(before)
    for _, rep_id in assigned:
        for other_rep, weight in weights.items():
            replayed[other_rep] = replayed.get(other_rep, 0) + weight
        replayed[rep_id] -= sum(weights.values())
    assert after == replayed


async def _queries_waiting_on_a_lock(uow: UnitOfWork) -> list[str]:
    async with uow.read() as session:
        waiting = await session.scalars(
            text("SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
        )
        return list(waiting)


# The totals of the pool whose turns were taken (not those of a pool no rule sent a lead to).
_TURNS_TAKEN = select(store.rotations.c.weights).where(store.rotations.c.last_rep_id.is_not(None))


async def test_turns_added_by_two_transactions_at_once_both_count(database_url: str, schema: str) -> None:
    """The second addition waits on the first's row lock; once that commits, it adds to the totals the first left."""
    async with _replicas(database_url, schema) as (first, second):
        async with first.transaction() as tx:
            await tx.session.execute(store.rotations.insert().values(pool="pool-1", weights={"rep-a": 3, "rep-b": -3}))
        added: asyncio.Task[None] | None = None
        async with first.transaction() as tx:
            await store.add_to_rotations(tx.session, [("pool-1", {"rep-a": -4, "rep-b": 2, "rep-c": 2}, "rep-a")])
            await send_writes(tx.session)  # sent now: the row stays locked until this transaction ends

            async def add_meanwhile() -> None:
                async with second.transaction() as other:
                    await store.add_to_rotations(other.session, [("pool-1", {"rep-a": 1, "rep-c": -1}, "rep-c")])

            added = asyncio.create_task(add_meanwhile())
            await eventually(lambda: _waiting_on_a_lock(first), timeout=10, message="the second addition waits")
        await asyncio.wait_for(added, 10)
        async with first.read() as session:
            turns = select(store.rotations.c.weights, store.rotations.c.last_rep_id)
            row = (await session.execute(turns.where(store.rotations.c.pool == "pool-1"))).one()
    assert tuple(row) == ({"rep-a": 0, "rep-b": -1, "rep-c": 1}, "rep-c")


async def _waiting_on_a_lock(uow: UnitOfWork) -> bool:
    async with uow.read() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
    return bool(waiting)
