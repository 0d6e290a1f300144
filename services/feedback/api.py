"""HTTP routes of feedback: outcomes in, journeys out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from services.feedback import store
from services.feedback.schemas import OutcomeIn
from services.feedback.service import record_outcome
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["feedback"])


class OutcomeAccepted(BaseModel):
    """The answer to an outcome."""

    outcome_id: str
    status: Literal["recorded", "duplicate", "pending"]


class JourneyStepOut(BaseModel):
    """One step of a lead's journey."""

    step: str
    at: datetime
    actor: str
    reason: str
    details: dict[str, Any]


class Timeline(BaseModel):
    """A lead's whole journey across services."""

    lead_id: str
    steps: list[JourneyStepOut]


@router.post("/outcomes", status_code=202, response_model=OutcomeAccepted)
async def post_outcome(body: OutcomeIn, response: Response, uow: UowDep, _: PrincipalDep) -> OutcomeAccepted:
    """Record a sales outcome; repeating a tool's external_id returns the first answer."""
    try:
        outcome = body.as_event(outcome_id=str(uuid.uuid4()))
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("body", name), "msg": "required when kind is won", "type": "missing"} for name in exc.args[0]]
        ) from exc
    outcome_id, status = await record_outcome(uow, outcome)
    if status == "duplicate":
        response.status_code = 200
    return OutcomeAccepted(outcome_id=outcome_id, status=status)


@router.get("/leads/{lead_id}/timeline", response_model=Timeline)
async def get_timeline(lead_id: str, uow: UowDep, _: PrincipalDep) -> Timeline:
    """Every step of the lead's journey, each with its time, actor and reason."""
    async with uow.read() as session:
        rows = await store.load_journey(session, lead_id=lead_id)
    if not rows:
        raise ProblemError(404, f"no journey known for lead {lead_id}")
    steps = [
        JourneyStepOut(
            step=row["step"], at=row["occurred_at"], actor=row["actor"], reason=row["reason"], details=row["details"]
        )
        for row in rows
    ]
    return Timeline(lead_id=lead_id, steps=steps)
