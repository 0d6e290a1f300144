"""Use cases of routing: decide, store the assignment and emit `leads.routed` in one transaction."""

from __future__ import annotations

import uuid

from services.routing import store
from services.routing.domain import assign_round_robin
from shared.envelope import utc_now
from shared.events import LeadRoutedV1, LeadScoredV1
from shared.uow import Transaction, UnitOfWork


async def assign_lead(tx: Transaction, scored: LeadScoredV1) -> None:
    """Route a scored lead once; a lead already routed is left as it is."""
    if await store.assignment_exists(tx.session, lead_id=scored.lead_id):
        return
    last_assigned = await store.lock_rotation(tx.session, pool=store.DEFAULT_POOL)
    decision = assign_round_robin(await store.load_reps(tx.session), last_assigned=last_assigned)
    rep = decision.rep
    if rep is not None:
        await store.advance_rotation(tx.session, pool=store.DEFAULT_POOL, rep_id=rep.rep_id)
    routed = LeadRoutedV1(
        lead_id=scored.lead_id,
        assignment_id=str(uuid.uuid4()),
        kind=decision.kind,
        rep_id=rep.rep_id if rep else None,
        rep_name=rep.name if rep else None,
        reason=f"{decision.reason}; score {scored.score} ({scored.verdict})",
        score=scored.score,
        routed_at=utc_now(),
    )
    await store.insert_assignment(
        tx.session,
        assignment_id=routed.assignment_id,
        lead_id=routed.lead_id,
        kind=routed.kind,
        rep_id=routed.rep_id,
        score=routed.score,
        reason=routed.reason,
        details={"pool": store.DEFAULT_POOL, "skipped": [list(pair) for pair in decision.skipped]},
        decided_at=routed.routed_at,
    )
    await tx.emit(routed)


async def add_rep(uow: UnitOfWork, *, rep_id: str | None, name: str, email: str, active: bool) -> str:
    """Create a rep; returns its id. A duplicate id or email raises IntegrityError."""
    rep_id = rep_id or str(uuid.uuid4())
    async with uow.transaction() as tx:
        await store.insert_rep(tx.session, rep_id=rep_id, name=name, email=email, active=active, created_at=utc_now())
    return rep_id
