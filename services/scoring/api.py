"""HTTP routes of scoring: scores with their explanation, models marketers own, and the model's quality."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, StringConstraints

from services.scoring import store
from services.scoring.quality import calibration, roc_auc, top_decile_lift
from services.scoring.rules import ScoringModelDefinition
from services.scoring.service import activate, create_model, dry_run
from shared.app import UowDep
from shared.auth import AdminDep, PrincipalDep
from shared.events import ScoreContribution
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["scores"])

# Versions live in a PostgreSQL INTEGER column: a larger number can name no model (422, not a driver error).
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]


class LeadScore(BaseModel):
    """A lead's current score and why."""

    lead_id: str
    score: int
    verdict: str
    grade: str | None
    fit_score: int | None
    engagement_score: int | None
    rules_score: int | None
    learned_probability: float | None
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


class ModelIn(BaseModel):
    """A scoring model to store as a draft."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    definition: ScoringModelDefinition


class ModelOut(BaseModel):
    """A stored model version."""

    version: int
    name: str
    status: str
    definition: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None


@router.post("/scoring/models", status_code=201, response_model=ModelOut, tags=["scoring models"])
async def post_model(body: ModelIn, uow: UowDep, _: AdminDep) -> ModelOut:
    """Store a model as a draft; it is validated whole (422 names the path of every error)."""
    version = await create_model(uow, name=body.name, definition=body.definition)
    return await get_model(version, uow, _)


@router.get("/scoring/models", response_model=list[ModelOut], tags=["scoring models"])
async def get_models(uow: UowDep, _: PrincipalDep) -> list[ModelOut]:
    """Every model version, newest first."""
    async with uow.read() as session:
        return [ModelOut.model_validate(row) for row in await store.load_models(session)]


@router.get("/scoring/models/{version}", response_model=ModelOut, tags=["scoring models"])
async def get_model(version: Version, uow: UowDep, _: PrincipalDep) -> ModelOut:
    """One model version."""
    async with uow.read() as session:
        row = await store.load_model(session, version=version)
    if row is None:
        raise ProblemError(404, f"no scoring model version {version}")
    return ModelOut.model_validate(row)


@router.post("/scoring/models/{version}/dry-run", tags=["scoring models"])
async def post_dry_run(
    version: Version, uow: UowDep, _: PrincipalDep, last: Annotated[int, Query(ge=1, le=10_000)] = 500
) -> dict[str, Any]:
    """What this version would do to the last N leads, without changing anything."""
    model = await get_model(version, uow, _)
    definition = ScoringModelDefinition.model_validate(model.definition)
    return {"version": version, **await dry_run(uow, definition=definition, last=last)}


@router.post("/scoring/models/{version}/activate", status_code=202, tags=["scoring models"])
async def post_activate(version: Version, uow: UowDep, _: AdminDep) -> dict[str, Any]:
    """Put this version in force; open leads are re-scored in the background (follow the job)."""
    await get_model(version, uow, _)
    job_id = await activate(uow, version=version)
    return {"version": version, "job_id": job_id, "progress": f"/v1/scoring/jobs/{job_id}"}


@router.get("/scoring/jobs/{job_id}", tags=["scoring models"])
async def get_job(job_id: str, uow: UowDep, _: PrincipalDep) -> dict[str, Any]:
    """Progress of a re-score job."""
    async with uow.read() as session:
        job = await store.load_job(session, job_id=job_id)
    if job is None:
        raise ProblemError(404, f"no re-score job {job_id}")
    return job


@router.get("/scoring/quality", tags=["scoring models"])
async def get_quality(uow: UowDep, _: PrincipalDep) -> dict[str, Any]:
    """How well the learned model, the rules and the blended score rank leads, judged on predictions made before
    each outcome was learned (never trained on), and the learned model's calibration per band."""
    async with uow.read() as session:
        models = await store.load_models(session)
        learned = await store.learned_summary(session)
        logged = await store.load_predictions(session)
    labels = [row["label"] for row in logged]
    scored = {
        "learned_probability": [row["probability"] for row in logged],
        "rules_score": [row["rules_score"] for row in logged],
        "score": [row["score"] for row in logged],
    }
    return {
        "model_versions": [{"version": m["version"], "name": m["name"], "status": m["status"]} for m in models],
        "learned_model": learned,
        "holdout": {
            "outcomes": len(labels),
            "positives": sum(labels),
            "auc": {name: _rounded(roc_auc(values, labels)) for name, values in scored.items()},
            "top_decile_lift": {name: _rounded(top_decile_lift(values, labels)) for name, values in scored.items()},
        },
        "calibration": [band.__dict__ for band in calibration(scored["learned_probability"], labels)],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
