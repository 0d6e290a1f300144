"""HTTP routes of scoring."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from services.scoring import store
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.events import ScoreContribution
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["scores"])


class LeadScore(BaseModel):
    """A lead's current score and why."""

    lead_id: str
    score: int
    verdict: str
    model_version: str
    contributions: list[ScoreContribution]
    scored_at: datetime


@router.get("/scores/{lead_id}", response_model=LeadScore)
async def get_score(lead_id: str, uow: UowDep, _: PrincipalDep) -> LeadScore:
    """The lead's current score with its explanation."""
    async with uow.read() as session:
        row = await store.load_score(session, lead_id=lead_id)
    if row is None:
        raise ProblemError(404, f"no score for lead {lead_id}")
    return LeadScore.model_validate(row)
