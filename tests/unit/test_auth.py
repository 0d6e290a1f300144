"""Bearer-key authentication: 401 problems for everyone but the holder of the admin key."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from shared.auth import PrincipalDep
from shared.problems import PROBLEM_JSON, install_problem_handlers

KEY = "s3cret-admin-key"


def _app(admin_key: str | None) -> FastAPI:
    app = FastAPI()
    app.state.admin_key = admin_key
    install_problem_handlers(app)

    @app.get("/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, object]:
        return {"name": principal.name, "scopes": sorted(principal.scopes)}

    return app


async def _whoami(headers: dict[str, str], *, admin_key: str | None = KEY) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(admin_key))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/whoami", headers=headers)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_missing_header_is_a_401_problem_asking_for_a_bearer_key() -> None:
    response = await _whoami({})
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing" in response.json()["detail"]


async def test_wrong_key_is_a_401_problem() -> None:
    response = await _whoami(_bearer("guess"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "invalid API key"


async def test_other_scheme_is_treated_as_missing() -> None:
    response = await _whoami({"Authorization": f"Basic {KEY}"})
    assert response.status_code == 401
    assert "missing" in response.json()["detail"]


async def test_admin_key_authenticates_the_admin() -> None:
    response = await _whoami(_bearer(KEY))
    assert response.status_code == 200
    assert response.json() == {"name": "admin", "scopes": ["admin"]}


async def test_without_a_configured_key_nobody_gets_in() -> None:
    assert (await _whoami(_bearer("None"), admin_key=None)).status_code == 401
    assert (await _whoami(_bearer(""), admin_key="")).status_code == 401
