"""HTTP routes of routing: reps and assignments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, EmailStr, StringConstraints
from sqlalchemy.exc import IntegrityError

from services.routing import store
from services.routing.service import add_rep
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["routing"])

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
RepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


class RepIn(BaseModel):
    """A rep to add."""

    model_config = ConfigDict(extra="forbid")

    rep_id: RepId | None = None
    name: Name
    email: EmailStr
    active: bool = True


class RepOut(BaseModel):
    """A rep as stored."""

    rep_id: str
    name: str
    email: str
    active: bool
    created_at: datetime


class Assignment(BaseModel):
    """A routing decision and its explanation."""

    assignment_id: str
    lead_id: str
    kind: str
    rep_id: str | None
    score: int
    reason: str
    details: dict[str, Any]
    decided_at: datetime


@router.post("/reps", status_code=201, response_model=RepOut)
async def post_rep(body: RepIn, uow: UowDep, _: PrincipalDep) -> RepOut:
    """Add a rep to the default pool."""
    try:
        rep_id = await add_rep(uow, rep_id=body.rep_id, name=body.name, email=body.email.lower(), active=body.active)
    except IntegrityError as exc:
        raise ProblemError(409, "a rep with this rep_id or email already exists") from exc
    async with uow.read() as session:
        rep = next(row for row in await store.list_reps(session) if row["rep_id"] == rep_id)
    return RepOut.model_validate(rep)


@router.get("/reps", response_model=list[RepOut])
async def get_reps(uow: UowDep, _: PrincipalDep) -> list[RepOut]:
    """Every rep."""
    async with uow.read() as session:
        return [RepOut.model_validate(row) for row in await store.list_reps(session)]


@router.get("/assignments/{lead_id}", response_model=Assignment)
async def get_assignment(lead_id: str, uow: UowDep, _: PrincipalDep) -> Assignment:
    """Who got the lead, and why."""
    async with uow.read() as session:
        row = await store.load_assignment(session, lead_id=lead_id)
    if row is None:
        raise ProblemError(404, f"lead {lead_id} has not been routed")
    return Assignment.model_validate(row)
