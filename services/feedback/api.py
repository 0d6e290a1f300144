"""HTTP routes of feedback: outcomes in, journeys out."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from services.feedback import store
from services.feedback.service import record_outcome
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.envelope import utc_now
from shared.events import OutcomeKind, OutcomeRecordedV1
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["feedback"])

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class OutcomeIn(BaseModel):
    """What a sales tool reports about a lead."""

    model_config = ConfigDict(extra="forbid")

    lead_id: Annotated[str, StringConstraints(min_length=1, max_length=36)]
    kind: OutcomeKind
    amount: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=2)] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    reason: Text | None = None
    competitor: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    rep_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    external_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    occurred_at: AwareDatetime | None = None


class OutcomeAccepted(BaseModel):
    """The answer to an outcome."""

    outcome_id: str
    status: Literal["recorded", "duplicate"]


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
    _require_amount_when_won(body)
    outcome = OutcomeRecordedV1(
        outcome_id=str(uuid.uuid4()),
        **body.model_dump(exclude={"occurred_at"}),
        occurred_at=body.occurred_at or utc_now(),
    )
    outcome_id, status = await record_outcome(uow, outcome)
    if status == "duplicate":
        response.status_code = 200
    return OutcomeAccepted(outcome_id=outcome_id, status=status)


def _require_amount_when_won(body: OutcomeIn) -> None:
    missing = [name for name in ("amount", "currency") if body.kind == "won" and getattr(body, name) is None]
    if missing:
        raise RequestValidationError(
            [{"loc": ("body", name), "msg": "required when kind is won", "type": "missing"} for name in missing]
        )


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
