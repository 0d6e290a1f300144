"""Every error a service returns is an RFC 9457 problem document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http import HTTPStatus

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from shared.problems import PROBLEM_JSON, RETRY_AFTER_SECONDS, ProblemError, install_problem_handlers


class Rep(BaseModel):
    name: str
    quota: int = Field(ge=0)


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/conflict")
    async def conflict() -> None:
        raise ProblemError(409, "rep exists", headers={"X-Rep": "rep-a"}, rep_id="rep-a")

    @app.post("/reps")
    async def add_rep(rep: Rep, team: int) -> Rep:
        return rep

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/database-down")
    async def database_down() -> None:
        raise ConnectionRefusedError("connection refused")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The app re-raises unexpected errors after answering, as Starlette does, for the server to log.
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_problem_error_becomes_a_problem_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/conflict")
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["x-rep"] == "rep-a"
    assert response.json() == {
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "detail": "rep exists",
        "rep_id": "rep-a",
    }


async def test_invalid_request_lists_each_bad_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/reps", params={"team": "x"}, json={"quota": -1})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["title"] == HTTPStatus(422).phrase
    assert [error["field"] for error in problem["errors"]] == ["team", "name", "quota"]
    assert all(error["message"] for error in problem["errors"])
    assert problem["detail"] == "invalid field(s): team, name, quota"


async def test_missing_body_is_reported_as_the_body_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/reps", params={"team": "1"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["body"]


async def test_unknown_route_is_a_problem_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["title"] == "Not Found"


async def test_unexpected_exception_is_a_500_problem_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["title"] == "Internal Server Error"
    assert "bug" not in response.text


async def test_unavailable_dependency_is_a_503_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/database-down")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert response.json()["status"] == 503
