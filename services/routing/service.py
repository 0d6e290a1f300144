"""Use cases of routing: decide, store the lead's routing state and emit `leads.routed`, all in one transaction.

Every path that gives a lead to a rep (first assignment, a queue draining, an SLA miss, a rejection) goes through
`_route`, which takes the pool's turn lock, decides with the pure domain, claims the rep's capacity by
compare-and-increment and records the decision with its explanation.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.routing import store, stream, webhooks
from services.routing.domain import Decision, decide
from services.routing.rules import DEFAULT_POLICY, RoutingPolicy, lead_view
from shared.envelope import utc_now
from shared.events import LeadErasedV1, LeadRoutedV1, LeadScoredV1, OutcomeRecordedV1, RoutingKind
from shared.metrics import count_sla_miss, observe_speed_to_lead
from shared.privacy import forget_sent_events, is_erased, mark_erased, strip_personal
from shared.problems import ProblemError
from shared.uow import Transaction, UnitOfWork

log = logging.getLogger(__name__)

# Outcomes after which the rep no longer works the lead: their capacity is freed.
CLOSING_OUTCOMES = frozenset({"won", "lost", "disqualified", "recycled"})
CLAIM_ATTEMPTS = 3


async def route_scored_lead(tx: Transaction, scored: LeadScoredV1, *, now: datetime | None = None) -> None:
    """Route a scored lead once. A re-score of a lead already routed changes nothing, except that a lead still
    waiting in a queue waits with its new score."""
    moment = now or utc_now()
    lead = lead_view(scored)
    if await is_erased(tx.session, store.metadata, lead_id=scored.lead_id):  # erased before this arrived
        lead = strip_personal(lead)
    current = await store.load_assignment(tx.session, lead_id=scored.lead_id, for_update=True)
    if current is not None:
        if current["status"] == "queued":
            await store.update_assignment(
                tx.session, lead_id=scored.lead_id, lead=lead, score=scored.score, grade=scored.grade,
                verdict=scored.verdict, updated_at=moment,
            )  # fmt: skip
        return
    routed = await _route(tx, lead, now=moment, current=None, cause=None)
    observe_speed_to_lead(lead.get("captured_at"), routed.routed_at)


async def _route(
    tx: Transaction,
    lead: dict[str, Any],
    *,
    now: datetime,
    current: dict[str, Any] | None,
    cause: str | None,
    previous_rep_id: str | None = None,
) -> LeadRoutedV1:
    """Decide who gets `lead` now and record it: a new owner, or the pool's queue."""
    version, policy = await load_active_policy(tx)
    tried = frozenset((current or {}).get("tried") or ())
    owner = await store.account_owner(tx.session, domain=lead.get("company_domain"))
    rule = policy.first_match(lead)
    pool = rule.pool if rule else None
    decision: Decision | None = None
    for _ in range(CLAIM_ATTEMPTS):
        rotation = await store.lock_rotation(tx.session, pool=pool) if pool else {}
        reps, loads = await store.load_roster(tx.session)
        decision = decide(
            lead, policy=policy, reps=reps, loads=loads, account_owner=owner,
            rotations={pool: rotation} if pool else {}, now=now, exclude=tried,
        )  # fmt: skip
        if decision.rep is None or await store.claim_capacity(
            tx.session, decision.rep, today=decision.rep.local_day(now)
        ):
            break
        # Another replica took the rep's last slot between our read and our claim: decide again on fresh loads.
        log.info("rep %s filled up concurrently; deciding again for lead %s", decision.rep.rep_id, lead["lead_id"])
    assert decision is not None
    if decision.rep is not None and decision.via == "rule" and pool:
        await store.save_rotation(tx.session, pool=pool, weights=dict(decision.rotation), rep_id=decision.rep.rep_id)
    record = routing_record(lead, decision, policy=policy, version=version, now=now, current=current, cause=cause,
                            previous_rep_id=previous_rep_id)  # fmt: skip
    return await _record(tx, record, current=current)


async def _record(tx: Transaction, record: RoutingRecord, *, current: dict[str, Any] | None) -> LeadRoutedV1:
    """Store a lead's routing decision (a new assignment, or the change of the current one) and publish it."""
    if current is None:
        await store.insert_assignment(tx.session, **record.new_assignment())
    else:
        await store.update_assignment(tx.session, lead_id=record.routed.lead_id, tried=current.get("tried") or [],
                                      **record.state)  # fmt: skip
    await publish(tx, record.routed, details=record.details)
    return record.routed


@dataclass(frozen=True)
class RoutingRecord:
    """What a routing decision stores and announces: the lead's new routing state, its event and explanation."""

    state: dict[str, Any]
    routed: LeadRoutedV1
    details: dict[str, Any]

    def new_assignment(self) -> dict[str, Any]:
        """The assignments row of a lead routed for the first time."""
        return {"lead_id": self.routed.lead_id, "tried": [], **self.state}


def routing_record(
    lead: dict[str, Any],
    decision: Decision,
    *,
    policy: RoutingPolicy,
    version: str,
    now: datetime,
    current: dict[str, Any] | None,
    cause: str | None,
    previous_rep_id: str | None,
) -> RoutingRecord:
    """The routing state and `leads.routed` event of `decision` on `lead` (its SLA deadline, kind and reason)."""
    rep = decision.rep
    ever_assigned = bool(current and (current.get("tried") or current.get("rep_id")))
    kind: RoutingKind = "unassigned" if rep is None else "reassigned" if ever_assigned else "assigned"
    deadline = now + policy.sla_for(lead.get("grade")) if rep is not None else None
    reason = decision.reason if cause is None else f"{cause}; {decision.reason}"
    assignment_id = str(uuid.uuid4()) if rep is not None or current is None else current["assignment_id"]
    details = {
        **decision.explanation(),
        "policy_version": version,
        "sla_deadline": deadline.isoformat() if deadline else None,
    }
    state: dict[str, Any] = {
        "assignment_id": assignment_id, "kind": kind, "rep_id": rep.rep_id if rep else None,
        "score": int(lead.get("score") or 0), "reason": reason[:1000], "details": details, "decided_at": now,
        "status": "assigned" if rep else "queued", "pool": decision.pool, "rule": decision.rule,
        "grade": lead.get("grade"), "verdict": lead.get("verdict"), "sla_deadline": deadline, "lead": lead,
        "updated_at": now,
    }  # fmt: skip
    routed = LeadRoutedV1(
        lead_id=lead["lead_id"], assignment_id=assignment_id, kind=kind, rep_id=rep.rep_id if rep else None,
        rep_name=rep.name if rep else None, rep_email=rep.email if rep else None, team=rep.team if rep else None,
        pool=decision.pool, rule=decision.rule, grade=lead.get("grade"), verdict=lead.get("verdict"),
        sla_deadline=deadline, previous_rep_id=previous_rep_id, reason=reason, score=state["score"], routed_at=now,
        lead=_contact(lead),
    )  # fmt: skip
    return RoutingRecord(state, routed, details)


async def publish(tx: Transaction, routed: LeadRoutedV1, *, details: Mapping[str, Any] | None = None) -> None:
    """Emit a routing event to every channel in the same transaction: Kafka (outbox), webhooks, live stream."""
    await publish_all(tx, [(routed, details or {})])


async def publish_all(
    tx: Transaction, announced: Sequence[tuple[LeadRoutedV1, Mapping[str, Any]]], *, subscribed: bool = True
) -> None:
    """`publish` many routing events, in order, with one statement per channel (`subscribed` False: the
    transaction found no active webhook subscription, none is read)."""
    events = await tx.emit_all([routed for routed, _ in announced])
    await store.add_decisions(tx.session, [
        {"lead_id": routed.lead_id, "assignment_id": routed.assignment_id, "kind": routed.kind,
         "rep_id": routed.rep_id, "reason": routed.reason[:1000], "details": dict(details), "at": routed.routed_at}
        for routed, details in announced
    ])  # fmt: skip
    published = [(event, routed) for event, (routed, _) in zip(events, announced, strict=True)]
    if subscribed:
        await webhooks.enqueue_all_deliveries(tx.session, published)
    await stream.append_events(tx.session, published)


def _contact(lead: Mapping[str, Any]) -> dict[str, Any]:
    # What a sales tool needs to work the lead: the lead's own fields, without scoring's additions.
    return {key: value for key, value in lead.items() if key not in ("fit_grade", "went_cold")}


# Parsed policy versions, per database (a version's definition never changes once stored; validating it is the
# costly part).
_parsed_policies: weakref.WeakKeyDictionary[Any, dict[int, RoutingPolicy]] = weakref.WeakKeyDictionary()


# The policy the last run of each database followed: the next run's guess, before it reads which one is active.
_last_policies: weakref.WeakKeyDictionary[Any, RoutingPolicy] = weakref.WeakKeyDictionary()


async def load_policy(tx: Transaction, version: int | None) -> tuple[str, RoutingPolicy]:
    """Policy `version` as `load_active_policy` gives it when `version` is the active one (None: the default)."""
    if version is None:
        _last_policies[tx.session.get_bind()] = DEFAULT_POLICY
        return "default", DEFAULT_POLICY
    parsed = _parsed_policies.setdefault(tx.session.get_bind(), {})
    if version not in parsed:
        parsed[version] = RoutingPolicy.model_validate(await store.policy_definition(tx.session, version=version))
    _last_policies[tx.session.get_bind()] = parsed[version]
    return str(version), parsed[version]


def likely_policy(tx: Transaction) -> RoutingPolicy | None:
    """The policy the previous run of this database followed (None before the first): most likely the active one."""
    return _last_policies.get(tx.session.get_bind())


async def load_active_policy(tx: Transaction) -> tuple[str, RoutingPolicy]:
    """The active policy and its version ("default" when none was activated)."""
    row = await store.active_policy(tx.session)
    if row is None:
        return "default", DEFAULT_POLICY
    return str(row["version"]), RoutingPolicy.model_validate(row["definition"])


async def erase_lead(tx: Transaction, erased: LeadErasedV1) -> None:
    """Forget who the lead is: its routing state, webhook deliveries and stream keep only anonymous fields."""
    if await mark_erased(tx.session, store.metadata, lead_id=erased.lead_id):
        await store.erase_personal_data(tx.session, lead_id=erased.lead_id)
        await forget_sent_events(tx.session, store.metadata, lead_id=erased.lead_id)


# --- SLA timers and queues -------------------------------------------------------------------------------------------


async def fire_due_sla_timers(uow: UnitOfWork, *, now: datetime | None = None, limit: int = 50) -> int:
    """Re-assign every lead whose rep did not accept in time, one transaction per lead; each timer fires once
    whatever the replicas (the lead's row is locked, skipping rows another replica holds, and re-checked)."""
    moment = now or utc_now()
    async with uow.read() as session:
        due = await store.due_for_sla(session, now=moment, limit=limit)
    fired = 0
    for lead_id in due:
        async with uow.transaction() as tx:
            current = await store.claim_lead(tx.session, lead_id=lead_id, status="assigned", due_by=moment)
            if current is not None:
                await _breach(tx, current, now=moment)
                fired += 1
    return fired


async def _breach(tx: Transaction, current: dict[str, Any], *, now: datetime) -> None:
    lead_id = current["lead_id"]
    _, policy = await load_active_policy(tx)
    await _lock_pool(tx, current, policy)
    missed_by = current["rep_id"]
    rep_row = await store.load_rep_row(tx.session, rep_id=missed_by)
    await store.release_capacity(tx.session, rep_id=missed_by)
    misses = await store.count_miss(tx.session, rep_id=missed_by)
    count_sla_miss()
    deadline = current["sla_deadline"]
    breach = f"{rep_row['name'] if rep_row else missed_by} did not accept by {deadline.isoformat()} (miss #{misses})"
    await publish(tx, _event(current, "sla_breached", now, breach, rep_row, previous_rep_id=missed_by),
                  details={"missed_by": missed_by, "deadline": deadline.isoformat(), "misses": misses})  # fmt: skip
    if rep_row is not None and misses % policy.escalate_after_misses == 0:
        manager = rep_row.get("manager") or await store.team_manager(tx.session, team_id=rep_row.get("team"))
        note = (
            f"{rep_row['name']} has missed {misses} follow-up SLAs; escalated to {manager or 'nobody (no manager set)'}"
        )
        await publish(tx, _event(current, "escalated", now, note, rep_row, manager=manager),
                      details={"rep_id": missed_by, "misses": misses, "manager": manager})  # fmt: skip
    tried = [*(current.get("tried") or []), missed_by]
    current = {**current, "tried": tried}
    await _route(tx, current["lead"] or {"lead_id": lead_id}, now=now, current=current,
                 cause=f"SLA missed by {missed_by}", previous_rep_id=missed_by)  # fmt: skip


def _event(
    current: Mapping[str, Any],
    kind: RoutingKind,
    now: datetime,
    reason: str,
    rep_row: Mapping[str, Any] | None,
    *,
    previous_rep_id: str | None = None,
    manager: str | None = None,
) -> LeadRoutedV1:
    return LeadRoutedV1(
        lead_id=current["lead_id"], assignment_id=current["assignment_id"], kind=kind, rep_id=current["rep_id"],
        rep_name=rep_row["name"] if rep_row else None, rep_email=rep_row["email"] if rep_row else None,
        team=rep_row.get("team") if rep_row else None, pool=current.get("pool"), rule=current.get("rule"),
        grade=current.get("grade"), verdict=current.get("verdict"), sla_deadline=current.get("sla_deadline"),
        previous_rep_id=previous_rep_id, manager=manager, reason=reason, score=current["score"], routed_at=now,
        lead=_contact(current.get("lead") or {}),
    )  # fmt: skip


async def assign_queued_leads(uow: UnitOfWork, *, now: datetime | None = None, limit: int = 50) -> int:
    """Give waiting leads to reps who became available (oldest first, one transaction per lead); returns how many
    found a rep."""
    moment = now or utc_now()
    async with uow.read() as session:
        waiting = await store.queued_leads(session, limit=limit)
    assigned = 0
    for lead_id in waiting:
        async with uow.transaction() as tx:
            current = await store.claim_lead(tx.session, lead_id=lead_id, status="queued")
            if current is None or not await _anyone_could_take(tx, current, moment):
                continue
            routed = await _route(tx, current["lead"] or {"lead_id": lead_id}, now=moment, current=current,
                                  cause="a rep became available")  # fmt: skip
            assigned += routed.rep_id is not None
    return assigned


async def _lock_pool(tx: Transaction, current: Mapping[str, Any], policy: RoutingPolicy) -> None:
    # Locks are always taken in one order — the lead's row, its pool's turn, then reps' loads — so a timer and a
    # consumer never wait on each other in a cycle.
    rule = policy.first_match(current.get("lead") or {})
    if rule is not None:
        await store.lock_rotation(tx.session, pool=rule.pool)


async def _anyone_could_take(tx: Transaction, current: Mapping[str, Any], now: datetime) -> bool:
    # Cheap pre-check so a long queue nobody can take does not emit an `unassigned` event per lead per tick.
    _, policy = await load_active_policy(tx)
    reps, loads = await store.load_roster(tx.session)
    owner = await store.account_owner(tx.session, domain=(current.get("lead") or {}).get("company_domain"))
    decision = decide(current.get("lead") or {}, policy=policy, reps=reps, loads=loads, account_owner=owner,
                      rotations={}, now=now, exclude=frozenset(current.get("tried") or ()))  # fmt: skip
    return decision.rep is not None


# --- what sales tools say ------------------------------------------------------------------------------------------


async def accept_lead(uow: UnitOfWork, *, lead_id: str, rep_id: str | None) -> dict[str, Any]:
    """The rep takes the lead: its SLA timer stops. Accepting twice is harmless; accepting someone else's is not."""
    async with uow.transaction() as tx:
        current = await _owned(tx, lead_id, rep_id)
        if current["status"] == "assigned":
            await _accept(tx, current, now=utc_now())
        return await _state(tx, lead_id)


async def _accept(tx: Transaction, current: Mapping[str, Any], *, now: datetime) -> None:
    await store.update_assignment(tx.session, lead_id=current["lead_id"], status="accepted", updated_at=now)
    rep_row = await store.load_rep_row(tx.session, rep_id=current["rep_id"])
    name = rep_row["name"] if rep_row else current["rep_id"]
    await publish(tx, _event({**current, "status": "accepted"}, "accepted", now, f"{name} accepted the lead", rep_row))


async def reject_lead(uow: UnitOfWork, *, lead_id: str, rep_id: str | None, reason: str) -> dict[str, Any]:
    """The rep hands the lead back: it goes to the next eligible rep (never back to them)."""
    async with uow.transaction() as tx:
        current = await _owned(tx, lead_id, rep_id)
        if current["status"] not in ("assigned", "accepted"):
            raise ProblemError(409, f"lead {lead_id} is {current['status']}; only an assigned lead can be rejected",
                               current_status=current["status"])  # fmt: skip
        await _lock_pool(tx, current, (await load_active_policy(tx))[1])
        rejected_by = current["rep_id"]
        await store.release_capacity(tx.session, rep_id=rejected_by)
        tried = [*(current.get("tried") or []), rejected_by]
        current = {**current, "tried": tried}
        await _route(tx, current["lead"] or {"lead_id": lead_id}, now=utc_now(), current=current,
                     cause=f"rejected by {rejected_by}: {reason}", previous_rep_id=rejected_by)  # fmt: skip
        return await _state(tx, lead_id)


async def _owned(tx: Transaction, lead_id: str, rep_id: str | None) -> dict[str, Any]:
    current = await store.load_assignment(tx.session, lead_id=lead_id, for_update=True)
    if current is None:
        raise ProblemError(404, f"lead {lead_id} has not been routed")
    if current["status"] in ("queued", "closed"):
        raise ProblemError(409, f"lead {lead_id} is {current['status']}, not assigned to a rep",
                           current_status=current["status"])  # fmt: skip
    if rep_id is not None and rep_id != current["rep_id"]:
        raise ProblemError(409, f"lead {lead_id} is assigned to {current['rep_id']}, not {rep_id}",
                           current_status=current["status"], assigned_rep_id=current["rep_id"])  # fmt: skip
    return current


async def _state(tx: Transaction, lead_id: str) -> dict[str, Any]:
    found = await store.load_assignment(tx.session, lead_id=lead_id)
    assert found is not None
    return found


async def apply_outcome(tx: Transaction, outcome: OutcomeRecordedV1) -> None:
    """Outcomes from sales: `accepted` stops the SLA timer; closing outcomes free the rep's capacity."""
    current = await store.load_assignment(tx.session, lead_id=outcome.lead_id, for_update=True)
    if current is None:
        return
    if outcome.kind == "accepted" and current["status"] == "assigned":
        await _accept(tx, current, now=utc_now())
    elif outcome.kind in CLOSING_OUTCOMES and current["status"] != "closed":
        if current["status"] in ("assigned", "accepted") and current["rep_id"]:
            await store.release_capacity(tx.session, rep_id=current["rep_id"])
        await store.update_assignment(tx.session, lead_id=outcome.lead_id, status="closed", updated_at=utc_now())


# --- simulate -------------------------------------------------------------------------------------------------------


async def simulate(uow: UnitOfWork, lead: dict[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """Who would get this lead now, and why — nothing is assigned, no turn is taken."""
    async with uow.read() as session:
        row = await store.active_policy(session)
        version, policy = ("default", DEFAULT_POLICY) if row is None else (
            str(row["version"]), RoutingPolicy.model_validate(row["definition"]))  # fmt: skip
        rule = policy.first_match(lead)
        rotation = {}
        if rule is not None:
            rotation = await store.peek_rotation(session, pool=rule.pool)
        reps, loads = await store.load_roster(session)
        owner = await store.account_owner(session, domain=lead.get("company_domain"))
    moment = now or utc_now()
    decision = decide(lead, policy=policy, reps=reps, loads=loads, account_owner=owner,
                      rotations={rule.pool: rotation} if rule else {}, now=moment)  # fmt: skip
    deadline = moment + policy.sla_for(lead.get("grade")) if decision.rep else None
    return {
        "kind": decision.kind,
        "rep_id": decision.rep.rep_id if decision.rep else None,
        "rep_name": decision.rep.name if decision.rep else None,
        "sla_deadline": deadline,
        "policy_version": version,
        **decision.explanation(),
    }
