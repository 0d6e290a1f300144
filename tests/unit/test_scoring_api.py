"""scoring's HTTP contract for models marketers own, in process on SQLite (no broker needed to answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.scoring import service
from services.scoring.app import create_app
from services.scoring.settings import Settings
from shared.envelope import utc_now
from shared.events import LeadCapturedV1
from shared.uow import UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running
from tests.support.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = {
    "name": "Q3 model",
    "definition": {
        "fit_rules": [{"id": "japan", "field": "country", "op": "equals", "value": "JP", "points": 60}],
        "engagement_rules": [{"id": "demo", "activity": "demo_request", "points": 40}],
        "qualified_threshold": 50,
    },
}


@pytest.fixture
async def running_scoring(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running(create_app, offline_settings(Settings, tmp_path)) as started:
        yield started


@pytest.fixture
def app(running_scoring: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return running_scoring[0]


@pytest.fixture
def client(running_scoring: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return running_scoring[1]


async def capture(app: FastAPI, lead_id: str, country: str) -> None:
    uow: UnitOfWork = app.state.runtime.uow
    async with uow.transaction() as tx:
        lead = LeadCapturedV1(lead_id=lead_id, email=f"{lead_id}@x.example", country=country, captured_at=utc_now())
        await service.on_lead_captured(tx, lead)


async def test_invalid_model_is_refused_with_the_path_of_every_error(client: httpx.AsyncClient) -> None:
    bad: dict[str, Any] = {
        "name": "broken",
        "definition": {
            "fit_rules": [
                {"id": "a", "field": "shoe_size", "op": "equals", "value": 42, "points": 5},
                {"id": "b", "field": "country", "op": "range", "min": 5, "max": 1, "points": "ten"},
            ],
            "fit_grades": {"A": 20, "B": 30, "C": 10},
        },
    }
    answer = await client.post("/v1/scoring/models", json=bad, headers=ADMIN)

    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    fields = {error["field"] for error in answer.json()["errors"]}
    assert {"definition.fit_rules.0", "definition.fit_rules.1.points", "definition.fit_grades"} <= fields


async def test_draft_dry_run_then_activation_rescores_open_leads(app: FastAPI, client: httpx.AsyncClient) -> None:
    await capture(app, "lead-jp", "JP")
    await capture(app, "lead-de", "DE")
    created = await client.post("/v1/scoring/models", json=MODEL, headers=ADMIN)
    assert created.status_code == 201, created.text
    version = created.json()["version"]

    dry = await client.post(f"/v1/scoring/models/{version}/dry-run?last=10", headers=ADMIN)
    assert dry.json()["leads"] == 2 and dry.json()["became_qualified"] == 1
    assert (await client.get("/v1/scores/lead-jp", headers=ADMIN)).json()["model_version"] == "starter"

    activated = await client.post(f"/v1/scoring/models/{version}/activate", headers=ADMIN)
    assert activated.status_code == 202
    job_url = activated.json()["progress"]

    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(job_url, headers=ADMIN)).json()
        return job if job["status"] == "finished" else None

    job = await eventually(finished, timeout=20, message="re-score job finished")
    assert job["done"] == job["total"] == 2
    score = (await client.get("/v1/scores/lead-jp", headers=ADMIN)).json()
    assert (score["model_version"], score["verdict"], score["fit_score"]) == (f"v{version}", "qualified", 60)
    assert score["contributions"][0]["rule"] == "japan"


async def test_unknown_model_version_is_404(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/scoring/models/99/activate", headers=ADMIN)
    assert answer.status_code == 404


async def test_quality_reports_no_auc_before_any_outcome(client: httpx.AsyncClient) -> None:
    quality = (await client.get("/v1/scoring/quality", headers=ADMIN)).json()
    assert quality["learned_model"]["outcomes"] == 0
    assert quality["holdout"]["auc"]["learned_probability"] is None
