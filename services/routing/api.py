"""HTTP routes of routing: reps, teams, accounts, policies, assignments (accept/reject) and simulation."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from services.routing import admin, store
from services.routing.schemas import (
    AccountIn,
    AccountOut,
    AssignmentOut,
    Domain,
    PolicyIn,
    PolicyOut,
    RepIn,
    RepOut,
    SimulatedLead,
    TeamIn,
    TeamOut,
    Verdict,
)
from services.routing.service import accept_lead, reject_lead, simulate
from shared.app import UowDep
from shared.auth import AdminDep, PrincipalDep
from shared.envelope import utc_now
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["routing"])
RepIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
# Versions live in a PostgreSQL INTEGER column: a larger number can name no policy (422, not a driver error).
PolicyVersion = Annotated[int, Path(ge=1, le=2**31 - 1)]


# --- reps --------------------------------------------------------------------------------------------------------


@router.post("/reps", status_code=201, response_model=RepOut, tags=["reps"])
async def post_rep(body: RepIn, uow: UowDep, _: AdminDep) -> RepOut:
    """Add a rep (409 if the rep_id or email is taken)."""
    rep_id = await admin.save_rep(uow, body, create_only=True)
    return await get_rep(rep_id, uow, _)


@router.put("/reps/{rep_id}", response_model=RepOut, tags=["reps"])
async def put_rep(rep_id: RepIdPath, body: RepIn, uow: UowDep, _: AdminDep) -> RepOut:
    """Create or replace a rep's whole profile (capacity, hours, out of office, active...)."""
    if body.rep_id is not None and body.rep_id != rep_id:
        raise ProblemError(422, "rep_id in the body differs from the path", errors=[
            {"field": "rep_id", "message": f"must be {rep_id} or absent"}])  # fmt: skip
    await admin.save_rep(uow, body, rep_id=rep_id)
    return await get_rep(rep_id, uow, _)


@router.get("/reps", response_model=list[RepOut], tags=["reps"])
async def get_reps(uow: UowDep, _: PrincipalDep, team: str | None = None) -> list[RepOut]:
    """Every rep (of a team), with their current load."""
    async with uow.read() as session:
        return [_rep_out(row) for row in await store.list_reps(session, team=team)]


@router.get("/reps/{rep_id}", response_model=RepOut, tags=["reps"])
async def get_rep(rep_id: RepIdPath, uow: UowDep, _: PrincipalDep) -> RepOut:
    """One rep with their load."""
    async with uow.read() as session:
        row = await store.load_rep_row(session, rep_id=rep_id)
    if row is None:
        raise ProblemError(404, f"no rep {rep_id}")
    return _rep_out(row)


@router.delete("/reps/{rep_id}", status_code=204, tags=["reps"])
async def delete_rep(rep_id: RepIdPath, uow: UowDep, _: AdminDep) -> Response:
    """Remove a rep; their past assignments stay as history. Prefer `active: false` to pause someone."""
    async with uow.transaction() as tx:
        if not await store.delete_rep(tx.session, rep_id=rep_id):
            raise ProblemError(404, f"no rep {rep_id}")
    return Response(status_code=204)


def _rep_out(row: dict[str, Any]) -> RepOut:
    rep = store.rep_from_row(row)
    load = store.load_from_row(row)
    today: date = rep.local_day(utc_now())
    return RepOut.model_validate(
        {**row, "new_today": load.new_today(today), "sla_misses": row.get("sla_misses") or 0,
         "open_leads": load.open_leads, "languages": row.get("languages") or [], "skills": row.get("skills") or [],
         "territories": row.get("territories") or [], "segments": row.get("segments") or [],
         "out_of_office": row.get("out_of_office") or [], "weight": row.get("weight") or 1,
         "timezone": row.get("timezone") or "UTC"}
    )  # fmt: skip


# --- teams and accounts ------------------------------------------------------------------------------------------


@router.put("/teams/{team_id}", response_model=TeamOut, tags=["teams"])
async def put_team(team_id: RepIdPath, body: TeamIn, uow: UowDep, _: AdminDep) -> TeamOut:
    """Create or rename a team; reps join it through their `team` field."""
    async with uow.transaction() as tx:
        await store.upsert_team(tx.session, team_id=team_id, name=body.name, manager=body.manager, now=utc_now())
    return next(team for team in await get_teams(uow, _) if team.team_id == team_id)


@router.get("/teams", response_model=list[TeamOut], tags=["teams"])
async def get_teams(uow: UowDep, _: PrincipalDep) -> list[TeamOut]:
    """Every team with its rep counts."""
    async with uow.read() as session:
        return [TeamOut.model_validate(row) for row in await store.list_teams(session)]


@router.put("/accounts/{domain}", response_model=AccountOut, tags=["accounts"])
async def put_account(domain: Annotated[Domain, Path()], body: AccountIn, uow: UowDep, _: AdminDep) -> AccountOut:
    """Give a company (by its domain) to a rep: that rep gets its leads first, when available."""
    async with uow.transaction() as tx:
        if await store.load_rep_row(tx.session, rep_id=body.rep_id) is None:
            raise ProblemError(422, f"no rep {body.rep_id}", errors=[{"field": "rep_id", "message": "unknown rep"}])
        await store.upsert_account(tx.session, domain=domain, rep_id=body.rep_id, name=body.name, now=utc_now())
    return next(account for account in await get_accounts(uow, _) if account.domain == domain)


@router.get("/accounts", response_model=list[AccountOut], tags=["accounts"])
async def get_accounts(uow: UowDep, _: PrincipalDep) -> list[AccountOut]:
    """Every account and its owner."""
    async with uow.read() as session:
        return [AccountOut.model_validate(row) for row in await store.list_accounts(session)]


@router.delete("/accounts/{domain}", status_code=204, tags=["accounts"])
async def delete_account(domain: Annotated[Domain, Path()], uow: UowDep, _: AdminDep) -> Response:
    """Forget an account's owner."""
    async with uow.transaction() as tx:
        if not await store.delete_account(tx.session, domain=domain):
            raise ProblemError(404, f"no account {domain}")
    return Response(status_code=204)


# --- policies ------------------------------------------------------------------------------------------------------


@router.post("/routing/policies", status_code=201, response_model=PolicyOut, tags=["routing policies"])
async def post_policy(body: PolicyIn, uow: UowDep, _: AdminDep) -> PolicyOut:
    """Store a routing policy as a draft, validated whole: unknown fields, unreachable rules and rules whose pool
    is empty are 422, each error naming its path."""
    version = await admin.create_policy(uow, name=body.name, policy=body.definition)
    return await get_policy(version, uow, _)


@router.get("/routing/policies", response_model=list[PolicyOut], tags=["routing policies"])
async def get_policies(uow: UowDep, _: PrincipalDep) -> list[PolicyOut]:
    """Every policy version."""
    async with uow.read() as session:
        return [_policy_out(row) for row in await store.list_policies(session)]


@router.get("/routing/policies/{version}", response_model=PolicyOut, tags=["routing policies"])
async def get_policy(version: PolicyVersion, uow: UowDep, _: PrincipalDep) -> PolicyOut:
    """One policy version."""
    async with uow.read() as session:
        row = await store.load_policy(session, version=version)
    if row is None:
        raise ProblemError(404, f"no routing policy version {version}")
    return _policy_out(row)


@router.post("/routing/policies/{version}/activate", response_model=PolicyOut, tags=["routing policies"])
async def post_activate(version: PolicyVersion, uow: UowDep, _: AdminDep) -> PolicyOut:
    """Route every new lead with this version from now on."""
    return _policy_out(await admin.activate_policy(uow, version=version))


def _policy_out(row: dict[str, Any]) -> PolicyOut:
    status = "active" if row["active"] else "retired" if row["activated_at"] else "draft"
    return PolicyOut.model_validate({**row, "status": status})


@router.post("/routing/simulate", tags=["routing policies"])
async def post_simulate(body: SimulatedLead, uow: UowDep, _: PrincipalDep) -> dict[str, Any]:
    """Who would get this lead now, and why; nothing is assigned and nobody's turn is used."""
    return await simulate(uow, body.view())


@router.get("/routing/queues", tags=["routing policies"])
async def get_queues(uow: UowDep, _: PrincipalDep) -> dict[str, int]:
    """Leads waiting for an eligible rep, per pool."""
    async with uow.read() as session:
        return await store.queue_lengths(session)


# --- assignments ----------------------------------------------------------------------------------------------------


@router.get("/assignments/{lead_id}", response_model=AssignmentOut, tags=["assignments"])
async def get_assignment(lead_id: str, uow: UowDep, _: PrincipalDep) -> AssignmentOut:
    """Who has the lead, and why: the rule matched, every candidate and why each was skipped, and the history."""
    async with uow.read() as session:
        row = await store.load_assignment(session, lead_id=lead_id)
        history = await store.lead_history(session, lead_id=lead_id)
    if row is None:
        raise ProblemError(404, f"lead {lead_id} has not been routed")
    return AssignmentOut.model_validate({**row, "history": history})


@router.post("/assignments/{lead_id}/accept", response_model=AssignmentOut, tags=["assignments"])
async def post_accept(lead_id: str, uow: UowDep, _: PrincipalDep, body: Verdict | None = None) -> AssignmentOut:
    """The rep takes the lead (its SLA timer stops). 409 if it is someone else's, queued or closed."""
    await accept_lead(uow, lead_id=lead_id, rep_id=body.rep_id if body else None)
    return await get_assignment(lead_id, uow, _)


@router.post("/assignments/{lead_id}/reject", response_model=AssignmentOut, tags=["assignments"])
async def post_reject(lead_id: str, body: Verdict, uow: UowDep, _: PrincipalDep) -> AssignmentOut:
    """The rep hands the lead back with a reason; it goes to the next eligible rep."""
    if body.reason is None:
        raise ProblemError(422, "a rejection needs a reason", errors=[{"field": "reason", "message": "required"}])
    await reject_lead(uow, lead_id=lead_id, rep_id=body.rep_id, reason=body.reason)
    return await get_assignment(lead_id, uow, _)
