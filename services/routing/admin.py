"""Use cases of sales ops: reps, teams, accounts and routing policies (validated against the roster)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.routing import store
from services.routing.rules import RoutingPolicy, pool_problems
from services.routing.schemas import RepIn
from shared.envelope import utc_now
from shared.problems import ProblemError
from shared.uow import UnitOfWork


async def save_rep(uow: UnitOfWork, rep: RepIn, *, rep_id: str | None = None, create_only: bool = False) -> str:
    """Create or replace a rep; returns its id. 409 if the id (with `create_only`) or the email is taken."""
    rep_id = rep_id or rep.rep_id or str(uuid.uuid4())
    try:
        async with uow.transaction() as tx:
            if create_only and await store.load_rep_row(tx.session, rep_id=rep_id) is not None:
                raise ProblemError(409, f"rep {rep_id} already exists", rep_id=rep_id)
            await store.upsert_rep(tx.session, rep_id=rep_id, values=rep.stored(), now=utc_now())
    except IntegrityError as exc:
        raise ProblemError(409, f"another rep already has the email {rep.email}", field="email") from exc
    return rep_id


async def save_reps(uow: UnitOfWork, reps: list[RepIn]) -> dict[str, int]:
    """Create or replace many reps in one transaction (all or nothing); counts created and updated."""
    created = updated = 0
    try:
        async with uow.transaction() as tx:
            now = utc_now()
            for rep in reps:
                rep_id = rep.rep_id or str(uuid.uuid4())
                if await store.upsert_rep(tx.session, rep_id=rep_id, values=rep.stored(), now=now):
                    created += 1
                else:
                    updated += 1
    except IntegrityError as exc:
        raise ProblemError(409, "two reps share an email (in the file or with a stored rep)", field="email") from exc
    return {"created": created, "updated": updated}


async def activate_policy(uow: UnitOfWork, *, version: int) -> dict[str, Any]:
    """Make a stored policy the live one, after checking that every rule still reaches someone."""
    async with uow.transaction() as tx:
        row = await store.load_policy(tx.session, version=version)
        if row is None:
            raise ProblemError(404, f"no routing policy version {version}")
        await check_pools(tx.session, RoutingPolicy.model_validate(row["definition"]))
        await store.activate_policy(tx.session, version=version, at=utc_now())
        found = await store.load_policy(tx.session, version=version)
    assert found is not None
    return found


async def create_policy(uow: UnitOfWork, *, name: str, policy: RoutingPolicy) -> int:
    """Store a validated policy as a draft; returns its version."""
    async with uow.transaction() as tx:
        await check_pools(tx.session, policy)
        return await store.add_policy(tx.session, name=name, definition=policy.model_dump(mode="json"), at=utc_now())


async def check_pools(session: Any, policy: RoutingPolicy) -> None:
    """422 naming each rule that sends leads to an unknown or empty pool."""
    team_rows = await store.list_teams(session)
    rep_rows = await store.list_reps(session)
    teams = {row["team_id"]: int(row["active_reps"]) for row in team_rows}
    for row in rep_rows:  # a team named only on reps still counts as a pool
        if row.get("team") and row["team"] not in teams:
            teams[row["team"]] = sum(1 for other in rep_rows if other.get("team") == row["team"] and other["active"])
    errors = pool_problems(policy, teams=teams, reps={row["rep_id"]: bool(row["active"]) for row in rep_rows})
    if errors:
        raise ProblemError(422, "; ".join(error["message"] for error in errors), errors=[
            {"field": f"definition.{error['field']}", "message": error["message"]} for error in errors])  # fmt: skip
