"""Routing a run of scored leads at once: what routing them one by one, in order, does, in a few statements per
run instead of a dozen per lead.

The run's state is read once (the leads' routing states, the policy, the pools' turns, reps and loads, account
owners), each new lead is decided in order on a running view of loads and turns, and everything is written in bulk.
Capacity is claimed per rep for the whole run on the reps' locked load rows; when another replica took some of it
since the roster was read, the run is routed lead by lead instead, exactly as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.routing import store
from services.routing.domain import RoutingView, RunPlan, plan_run
from services.routing.reps import Load, Rep, has_room
from services.routing.rules import RoutingPolicy, lead_view
from services.routing.service import likely_policy, load_policy, publish_all, route_scored_lead, routing_record
from shared.envelope import utc_now
from shared.events import LeadScoredV1
from shared.metrics import observe_speed_to_lead
from shared.privacy import strip_personal
from shared.uow import Transaction

log = logging.getLogger(__name__)


async def route_scored_leads(tx: Transaction, run: Sequence[LeadScoredV1], *, now: datetime | None = None) -> None:
    """Route a run of scored leads exactly as `route_scored_lead` would one by one, in order, at `now`.

    Optimistically (`tx.optimistic`: a consumed batch on PostgreSQL), when every lead is new and every pool it needs
    has its turns, the run reads without locks and its writes are checked (shared.writes): the reps' capacity must
    still hold, and a lead routed meanwhile fails its insert. Either fails the commit, and the consumer routes the
    run again, with locks. Read then write: two round trips, no BEGIN, no COMMIT. The run's turns are added to the
    pools' totals as they stand at the commit (`store.add_to_rotations`), so replicas routing the same pools at once
    neither fail nor wait for each other: each pick is the next in turn as its replica read the pool, and every pick
    counts, so each rep's share stays within a pick per concurrent run of its weight's."""
    moment = now or utc_now()
    views = [lead_view(scored) for scored in run]
    optimistic = tx.optimistic
    known, leads, version, policy = await _read_run(tx, views, lock=not optimistic)
    if optimistic and not _fits_optimism(leads, known, policy):
        optimistic = False
        known, leads, version, policy = await _read_run(tx, views, lock=True)
    plan, turns_read = await _plan(tx, leads, known=known, policy=policy, now=moment)
    if optimistic:
        # Turns first, then capacity: the order the locking path takes their rows in.
        await store.add_to_rotations(tx.session, _turn_changes(plan, read=turns_read))
        await store.claim_capacities_checked(tx.session, [
            (rep, rep.local_day(moment), count) for rep, count in _claims(plan).values()
        ])  # fmt: skip
    else:
        if store.adds_turns(tx.session):
            # Row locks in the order every path takes them: the leads' (read), the pools' turns, the reps' loads. The
            # turns are locked only now, once the run is decided: replicas routing the same pools wait for each
            # other from here to the commit, not from their first read. (SQLite has one writer at a time.)
            await store.lock_rotations(tx.session, pools=sorted({pool for pool, _, _ in _last_turns(plan)}))
        if not await _claim_capacity(tx, plan, now=moment):
            log.info("a rep's capacity changed concurrently; routing a run of %d lead by lead", len(run))
            for scored in run:
                await route_scored_lead(tx, scored, now=moment)
            return
        await _save_turns(tx, plan, read=turns_read)
    await _record_all(tx, plan, policy=policy, version=version, now=moment, subscribed=known.subscribed)


async def _read_run(
    tx: Transaction, views: Sequence[dict[str, Any]], *, lock: bool
) -> tuple[store.RunLeads, list[dict[str, Any]], str, RoutingPolicy]:
    """What routing the run needs first: what routing holds about its leads (`store.read_run_leads`), the leads as
    routed (erased ones stripped) and the active policy with its version."""
    known = await store.read_run_leads(
        tx.session, lead_ids=list(dict.fromkeys(view["lead_id"] for view in views)),
        domains=[view.get("company_domain") for view in views], pools=_likely_pools(tx, views), lock=lock,
    )  # fmt: skip
    leads = [strip_personal(view) if view["lead_id"] in known.erased else view for view in views]
    version, policy = await load_policy(tx, known.policy_version)
    return known, leads, version, policy


def _fits_optimism(leads: Sequence[Mapping[str, Any]], known: store.RunLeads, policy: RoutingPolicy) -> bool:
    """Whether the run can be routed on reads without locks: all its leads are new (a re-scored lead's state is
    changed under its lock) and every pool they go to has its turns read (a pool without turns is created)."""
    if known.statuses:
        return False
    pools = {rule.pool for lead in leads if (rule := policy.first_match(lead)) is not None}
    return pools <= known.rotations.keys()


def _likely_pools(tx: Transaction, views: Sequence[Mapping[str, Any]]) -> set[str]:
    """The pools the run's leads would go to under the policy the previous run followed: their turns are locked with
    the run's one read (a pool it missed, as after a policy change, is locked on its own)."""
    policy = likely_policy(tx)
    if policy is None:
        return set()
    return {rule.pool for view in views if (rule := policy.first_match(view)) is not None}


async def _plan(
    tx: Transaction,
    leads: Sequence[dict[str, Any]],
    *,
    known: store.RunLeads,
    policy: RoutingPolicy,
    now: datetime,
) -> tuple[RunPlan, dict[str, dict[str, int]]]:
    """Read what deciding the run's new leads needs, then decide: the plan, and the pools' turns it was decided on
    (a pool without turns yet is created, locked, first)."""
    fresh = [lead for lead in leads if lead["lead_id"] not in known.statuses]
    pools = sorted({rule.pool for lead in fresh if (rule := policy.first_match(lead)) is not None})
    rotations = {pool: known.rotations[pool] for pool in pools if pool in known.rotations}
    rotations |= await store.lock_rotations(tx.session, pools=[pool for pool in pools if pool not in rotations])
    reps, loads = ([], {}) if not fresh else known.roster or await store.load_roster(tx.session)
    plan = plan_run(leads, statuses=known.statuses, view=RoutingView(loads, dict(rotations)), policy=policy,
                    reps=reps, owners=known.owners, now=now)  # fmt: skip
    return plan, rotations


def _claims(plan: RunPlan) -> dict[str, tuple[Rep, int]]:
    """Each chosen rep, by id, with how many of the run's leads they get."""
    chosen = {decision.rep.rep_id: decision.rep for _, decision in plan.decided if decision.rep is not None}
    counts = Counter(decision.rep.rep_id for _, decision in plan.decided if decision.rep is not None)
    return {rep_id: (chosen[rep_id], count) for rep_id, count in counts.items()}


async def _claim_capacity(tx: Transaction, plan: RunPlan, *, now: datetime) -> bool:
    """Claim each chosen rep's capacity for all their leads of the run, in rep id order. False, with nothing
    claimed, if a rep no longer has room for them (another replica took some since the roster was read)."""
    claims = _claims(plan)
    chosen = {rep_id: rep for rep_id, (rep, _) in claims.items()}
    counts = {rep_id: count for rep_id, (_, count) in claims.items()}
    if not counts:
        return True
    if len(counts) == 1:  # one compare-and-increment
        ((rep_id, count),) = counts.items()
        return await store.claim_capacity(tx.session, chosen[rep_id], today=chosen[rep_id].local_day(now), count=count)
    # Several reps: their load rows locked and checked first, so that no claim can fail once another was counted;
    # then every claim in one statement.
    current = await store.lock_loads(tx.session, rep_ids=sorted(counts))
    if not all(_fits(rep, current, counts[rep_id], now) for rep_id, rep in chosen.items()):
        return False
    await store.count_claims(
        tx.session,
        [(rep_id, chosen[rep_id].local_day(now), counts[rep_id], current[rep_id]) for rep_id in sorted(counts)],
    )
    return True


def _fits(rep: Rep, current: Mapping[str, Load], count: int, now: datetime) -> bool:
    return rep.rep_id in current and has_room(rep, current[rep.rep_id], rep.local_day(now), count)


def _last_turns(plan: RunPlan) -> list[tuple[str, dict[str, int], str]]:
    """Each pool whose turn the run took: its round-robin totals after the run, and the rep its last turn went to."""
    last_turns = {
        decision.pool: decision.rep.rep_id
        for _, decision in plan.decided
        if decision.rep is not None and decision.via == "rule"
    }
    return [(pool, dict(plan.view.rotations[pool]), rep_id) for pool, rep_id in sorted(last_turns.items())]


def _turn_changes(plan: RunPlan, *, read: Mapping[str, Mapping[str, int]]) -> list[tuple[str, dict[str, int], str]]:
    """`_last_turns` as changes to the totals `read`: what the run's picks added to each rep's."""
    return [
        (pool, {rep_id: total - read[pool].get(rep_id, 0) for rep_id, total in totals.items()}, rep_id)
        for pool, totals, rep_id in _last_turns(plan)
    ]


async def _save_turns(tx: Transaction, plan: RunPlan, *, read: Mapping[str, Mapping[str, int]]) -> None:
    """Store each pool's round-robin turns after the run, with the rep its last turn went to: on PostgreSQL what the
    run's picks added to the totals `read` is added to them (another replica's turns taken since the read stay
    counted), elsewhere the totals are written (SQLite has one writer at a time)."""
    if store.adds_turns(tx.session):
        await store.add_to_rotations(tx.session, _turn_changes(plan, read=read))
    else:
        await store.save_rotations(tx.session, _last_turns(plan))


async def _record_all(
    tx: Transaction, plan: RunPlan, *, policy: RoutingPolicy, version: str, now: datetime, subscribed: bool
) -> None:
    """Store the run's routing states (queued leads re-scored) and announce its decisions, in order."""
    records = [
        routing_record(dict(lead), decision, policy=policy, version=version, now=now, current=None, cause=None,
                       previous_rep_id=None)
        for lead, decision in plan.decided
    ]  # fmt: skip
    inserted = {record.routed.lead_id: record.new_assignment() for record in records}
    waiting = []
    for lead_id, lead in plan.rescored.items():
        if lead_id in inserted:  # queued earlier in this run: it is stored with its latest score straight away
            inserted[lead_id].update(_rescore(lead, now))
        else:
            waiting.append(lead)
    await store.insert_assignments(tx.session, list(inserted.values()))
    await store.rescore_queued(tx.session, waiting, at=now)
    await publish_all(tx, [(record.routed, record.details) for record in records], subscribed=subscribed)
    for record in records:
        observe_speed_to_lead(record.state["lead"].get("captured_at"), record.routed.routed_at)


def _rescore(lead: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    # What a re-score changes on a queued lead's routing state (as `route_scored_lead` does).
    return {"lead": dict(lead), "score": lead["score"], "grade": lead.get("grade"), "verdict": lead.get("verdict"),
            "updated_at": now}  # fmt: skip
