"""Pure routing decisions: a lead, the reps and their load in; who gets it (or which queue it waits in) and why out.

Order of precedence: the account owner (the lead's company domain belongs to a rep) if available; otherwise the
first matching rule's pool, where smooth weighted round robin picks among the eligible reps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from services.routing.reps import Load, Rep, Requirements, why_ineligible
from services.routing.rules import ALL_REPS, RoutingPolicy, RoutingRule


@dataclass(frozen=True)
class Candidate:
    """A rep routing looked at, and what it concluded."""

    rep_id: str
    name: str
    verdict: Literal["chosen", "eligible", "skipped"]
    reason: str

    def as_dict(self) -> dict[str, str]:
        """JSON form for the stored explanation."""
        return {"rep_id": self.rep_id, "name": self.name, "verdict": self.verdict, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    """Who gets the lead (or nobody: it waits in `pool`'s queue), by which path, and why."""

    kind: Literal["assigned", "unassigned"]
    rep: Rep | None
    pool: str
    rule: str | None
    via: Literal["account", "rule"]
    reason: str
    candidates: tuple[Candidate, ...]
    rotation: Mapping[str, int]  # the pool's round-robin state after this decision

    def explanation(self) -> dict[str, Any]:
        """JSON form stored with the assignment and shown by the API."""
        return {
            "via": self.via,
            "pool": self.pool,
            "rule": self.rule,
            "reason": self.reason,
            "candidates": [candidate.as_dict() for candidate in self.candidates],
        }


def decide(
    lead: Mapping[str, Any],
    *,
    policy: RoutingPolicy,
    reps: Sequence[Rep],
    loads: Mapping[str, Load],
    account_owner: str | None,
    rotations: Mapping[str, Mapping[str, int]],
    now: datetime,
    exclude: frozenset[str] = frozenset(),
) -> Decision:
    """Route `lead` (fields plus score/grade/verdict) at `now`; `exclude` are reps who already lost this lead."""
    by_id = {rep.rep_id: rep for rep in reps}
    owner = by_id.get(account_owner) if account_owner else None
    account_note: Candidate | None = None
    if owner is not None:
        problem = why_ineligible(owner, loads.get(owner.rep_id, Load()), now, Requirements(exclude=exclude))
        domain = lead.get("company_domain")
        if problem is None:
            chosen = Candidate(owner.rep_id, owner.name, "chosen", f"owns the account {domain}")
            return Decision("assigned", owner, f"account:{domain}", None, "account", f"{owner.name} owns the account "
                            f"{domain}", (chosen,), {})  # fmt: skip
        account_note = Candidate(owner.rep_id, owner.name, "skipped", f"owns the account {domain} but is {problem}")
    rule = policy.first_match(lead)
    if rule is None:
        notes = (account_note,) if account_note else ()
        return Decision("unassigned", None, ALL_REPS, None, "rule", "no routing rule matches the lead", notes, {})
    decision = decide_in_pool(
        lead, rule=rule, reps=reps, loads=loads, rotation=rotations.get(rule.pool, {}), now=now, exclude=exclude
    )
    if account_note is None:
        return decision
    return Decision(
        decision.kind, decision.rep, decision.pool, decision.rule, decision.via,
        f"{decision.reason}; account owner unavailable", (account_note, *decision.candidates), decision.rotation,
    )  # fmt: skip


@dataclass(frozen=True)
class RoutingView:
    """What routing knows between two decisions of a run of leads: each rep's load and each pool's round-robin
    totals, as the decisions so far left them."""

    loads: Mapping[str, Load]
    rotations: Mapping[str, Mapping[str, int]]


def decide_next(
    lead: Mapping[str, Any],
    *,
    view: RoutingView,
    policy: RoutingPolicy,
    reps: Sequence[Rep],
    account_owner: str | None,
    now: datetime,
) -> tuple[Decision, RoutingView]:
    """Route a new lead as `decide` does, and the view after it: the chosen rep carries one more lead and, when a
    rule's pool picked them, the pool's turn moves on. Deciding a run's leads in order through this gives what
    deciding each on freshly stored loads and turns would."""
    decision = decide(lead, policy=policy, reps=reps, loads=view.loads, account_owner=account_owner,
                      rotations=view.rotations, now=now)  # fmt: skip
    if decision.rep is None:
        return decision, view
    rep_id = decision.rep.rep_id
    loads = {**view.loads, rep_id: view.loads.get(rep_id, Load()).with_new_leads(decision.rep.local_day(now))}
    rotations = view.rotations
    if decision.via == "rule":
        rotations = {**rotations, decision.pool: dict(decision.rotation)}
    return decision, RoutingView(loads, rotations)


def decide_in_pool(
    lead: Mapping[str, Any],
    *,
    rule: RoutingRule,
    reps: Sequence[Rep],
    loads: Mapping[str, Load],
    rotation: Mapping[str, int],
    now: datetime,
    exclude: frozenset[str] = frozenset(),
) -> Decision:
    """Weighted round robin among the rule's pool members who are eligible now."""
    needs = requirements(rule, lead, exclude)
    members = sorted(pool_members(rule, reps), key=lambda rep: rep.rep_id)
    skipped: list[Candidate] = []
    eligible: list[Rep] = []
    for rep in members:
        problem = why_ineligible(rep, loads.get(rep.rep_id, Load()), now, needs)
        if problem is None:
            eligible.append(rep)
        else:
            skipped.append(Candidate(rep.rep_id, rep.name, "skipped", problem))
    matched = f"rule {rule.id} ({rule.explain()})"
    if not eligible:
        reason = f"{matched}: nobody in pool {rule.pool} is eligible now; the lead waits in its queue"
        return Decision("unassigned", None, rule.pool, rule.id, "rule", reason, tuple(skipped), dict(rotation))
    chosen, after = pick_weighted(eligible, rotation)
    others = [
        Candidate(rep.rep_id, rep.name, "eligible", "eligible, not their turn")
        for rep in eligible
        if rep.rep_id != chosen.rep_id
    ]
    picked = Candidate(chosen.rep_id, chosen.name, "chosen", f"weight {chosen.weight}, next in weighted round robin")
    reason = (
        f"{matched}: {chosen.name} is next in weighted round robin among {len(eligible)} eligible of "
        f"{len(members)} in pool {rule.pool}"
    )
    return Decision("assigned", chosen, rule.pool, rule.id, "rule", reason, (picked, *others, *skipped), after)


def pool_members(rule: RoutingRule, reps: Sequence[Rep]) -> list[Rep]:
    """The reps a rule sends leads to."""
    if rule.rep_id is not None:
        return [rep for rep in reps if rep.rep_id == rule.rep_id]
    if rule.team is not None:
        return [rep for rep in reps if rep.team == rule.team]
    return list(reps)


def requirements(rule: RoutingRule, lead: Mapping[str, Any], exclude: frozenset[str]) -> Requirements:
    """What the rule asks of a rep for this lead."""
    territory = None
    if rule.match_territory:
        country, region = lead.get("country"), lead.get("region")
        territory = f"{country}-{region}" if country and region else country or "unknown"
    segment = (lead.get("company_size") or "unknown") if rule.match_segment else None
    return Requirements(
        skills=frozenset(rule.require_skills),
        languages=frozenset(rule.require_languages),
        territory=territory,
        segment=segment,
        exclude=exclude,
    )


def pick_weighted(eligible: Sequence[Rep], rotation: Mapping[str, int]) -> tuple[Rep, dict[str, int]]:
    """Smooth weighted round robin (as in nginx): every eligible rep gains its weight, the highest total wins
    (ties by rep id, so the order reps were added never matters) and gives back the sum of the weights.

    Over any run of picks each rep's share tracks weight / total weight within one pick.
    """
    current = dict(rotation)
    total = 0
    for rep in eligible:
        current[rep.rep_id] = current.get(rep.rep_id, 0) + rep.weight
        total += rep.weight
    chosen = min(eligible, key=lambda rep: (-current[rep.rep_id], rep.rep_id))
    current[chosen.rep_id] -= total
    return chosen, current


@dataclass(frozen=True)
class RunPlan:
    """What routing a run of scored leads decides: each new lead with its decision (in order), the queued leads
    re-scored (by id, with their latest view) and the loads and turns after the run."""

    decided: tuple[tuple[Mapping[str, Any], Decision], ...]
    rescored: Mapping[str, Mapping[str, Any]]
    view: RoutingView


def plan_run(
    leads: Sequence[Mapping[str, Any]],
    *,
    statuses: Mapping[str, str | None],
    view: RoutingView,
    policy: RoutingPolicy,
    reps: Sequence[Rep],
    owners: Mapping[str, str],
    now: datetime,
) -> RunPlan:
    """Route scored leads in order as routing each on freshly stored state would: a lead already routed (`statuses`,
    or earlier in the run) is only re-scored while it waits in a queue; a new lead is decided on the loads and
    turns the leads before it left. `owners`: account owner by lower-cased company domain."""
    known = dict(statuses)
    decided: list[tuple[Mapping[str, Any], Decision]] = []
    rescored: dict[str, Mapping[str, Any]] = {}
    for lead in leads:
        lead_id = lead["lead_id"]
        if lead_id in known:
            if known[lead_id] == "queued":
                rescored[lead_id] = lead
            continue
        domain = lead.get("company_domain")
        owner = owners.get(domain.lower()) if domain else None
        decision, view = decide_next(lead, view=view, policy=policy, reps=reps, account_owner=owner, now=now)
        known[lead_id] = "queued" if decision.rep is None else "assigned"
        decided.append((lead, decision))
    return RunPlan(tuple(decided), rescored, view)
