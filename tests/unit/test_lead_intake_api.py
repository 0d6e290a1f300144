"""lead_intake's HTTP contract, in process on SQLite (the broker is unreachable: intake only needs its outbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from services.lead_intake import idempotency
from services.lead_intake.access import create_key, revoke_key
from services.lead_intake.app import create_app
from services.lead_intake.settings import Settings
from services.lead_intake.store import idempotency_keys
from shared.envelope import utc_now
from shared.uow import UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SITE = "https://www.acme.example"
FORM = {
    "name": "Contact us",
    "allowed_origins": [SITE],
    "redirect_urls": [f"{SITE}/thanks"],
    "requires_consent": True,
}


@pytest.fixture
async def running_intake(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = offline_settings(Settings, tmp_path, rate_limit_per_ip_per_minute=5)
    async with running(create_app, settings) as (app, http):
        assert (await http.put("/v1/forms/contact", json=FORM, headers=ADMIN)).status_code == 200
        yield app, http


@pytest.fixture
def app(running_intake: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return running_intake[0]


@pytest.fixture
def client(running_intake: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return running_intake[1]


def uow_of(app: FastAPI) -> UnitOfWork:
    uow: UnitOfWork = app.state.runtime.uow
    return uow


async def form_key(app: FastAPI) -> str:
    issued = await create_key(uow_of(app), name="site", kind="form", origins=[SITE], forms=["contact"])
    return issued.secret


async def server_key(app: FastAPI) -> str:
    return (await create_key(uow_of(app), name="crm", kind="server", origins=[], forms=[])).secret


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def bad_fields(response: httpx.Response) -> set[str]:
    return {error["field"] for error in problem(response, 422)["errors"]}


# --- capture and dedupe ------------------------------------------------------------------------------------------


async def test_json_lead_is_captured_then_a_resubmission_is_merged_into_it(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/leads", json={"email": "Ada@Acme.example", "company": "Acme"}, headers=ADMIN)
    again = await client.post("/v1/leads", json={"email": "ada@acme.example", "city": "Osaka"}, headers=ADMIN)

    assert first.status_code == again.status_code == 202
    assert first.json()["status"] == "captured" and again.json()["status"] == "merged"
    assert first.json()["lead_id"] == again.json()["lead_id"]
    lead = (await client.get(f"/v1/leads/{first.json()['lead_id']}", headers=ADMIN)).json()
    assert (lead["email"], lead["company"], lead["city"]) == ("ada@acme.example", "Acme", "Osaka")
    assert lead["history"][0]["changes"] == {"city": [None, "Osaka"]}


async def test_lead_posts_skip_the_router_but_are_timed_by_their_route(client: httpx.AsyncClient) -> None:
    """POST /v1/leads is served directly (shared.direct): its answers, good and bad, are still timed by route."""
    assert (await client.post("/v1/leads", json={"email": "ada@acme.example"}, headers=ADMIN)).status_code == 202
    assert (await client.post("/v1/leads", json={"email": "nope"}, headers=ADMIN)).status_code == 422
    assert (await client.post("/v1/leads", json={"email": "ada@acme.example"})).status_code == 401

    exposition = (await client.get("/metrics")).text
    for status in ("202", "422", "401"):
        timed = f'baton_http_request_duration_seconds_count{{method="POST",route="/v1/leads",status="{status}"}} 1.0'
        assert timed in exposition


async def test_segmentation_fields_are_normalised(client: httpx.AsyncClient) -> None:
    submitted = {
        "email": "ken@firm.example", "phone": "03-1234-5678", "country": "Japan", "seniority": "Vice President",
        "company_size": "250", "interests": ["automation", "automation", "ai"], "current_solution": "HubSpot",
        "consent_marketing": True, "consent_wording_version": "2026-01",
    }  # fmt: skip
    answer = await client.post("/v1/leads", json=submitted, headers=ADMIN)
    lead = (await client.get(f"/v1/leads/{answer.json()['lead_id']}", headers=ADMIN)).json()

    assert (lead["phone"], lead["country"], lead["seniority"], lead["company_size"]) == (
        "+81312345678", "JP", "vp", "201-1000")  # fmt: skip
    assert lead["interests"] == ["automation", "ai"]
    assert lead["company_domain"] == "firm.example"
    assert lead["consent_marketing"] is True and lead["consent_at"] is not None


async def test_every_bad_field_is_listed_in_one_422(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/v1/leads",
        json={"email": "nope", "phone": "12", "country": "Atlantis", "seniority": "wizard", "unknown": 1},
        headers=ADMIN,
    )
    assert bad_fields(answer) == {"email", "phone", "country", "seniority", "unknown"}


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"email": ', "application/json", 422),
        (b"[1, 2]", "application/json", 422),
        (b"email=a@b.example", "text/plain", 415),
        (b'{"email": "a@b.example", "attributes": {"x": "' + b"y" * 40_000 + b'"}}', "application/json", 413),
    ],
)
async def test_unusable_bodies_get_a_problem_and_store_nothing(
    client: httpx.AsyncClient, content: bytes, content_type: str, status: int
) -> None:
    answer = await client.post("/v1/leads", content=content, headers={**ADMIN, "content-type": content_type})
    problem(answer, status)


async def test_plain_form_post_keeps_unknown_fields_as_attributes(client: httpx.AsyncClient) -> None:
    body = "email=mei%40lin.example&first_name=Mei&interests=ai&interests=crm&how_heard=podcast&_gotcha="
    answer = await client.post(
        "/v1/leads", content=body, headers={**ADMIN, "content-type": "application/x-www-form-urlencoded"}
    )
    lead = (await client.get(f"/v1/leads/{answer.json()['lead_id']}", headers=ADMIN)).json()

    assert answer.status_code == 202
    assert lead["attributes"] == {"how_heard": "podcast"}
    assert lead["interests"] == ["ai", "crm"]


# --- keys, forms, origins ----------------------------------------------------------------------------------------


async def test_missing_or_wrong_keys_are_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    lead = {"email": "x@y.example"}
    assert problem(await client.post("/v1/leads", json=lead), 401)
    assert problem(await client.post("/v1/leads", json=lead, headers={"Authorization": "Bearer bk_x_y"}), 401)
    key = await form_key(app)
    assert problem(await client.get("/v1/leads/abc", headers={"Authorization": f"Bearer {key}"}), 403)
    server = await server_key(app)
    assert problem(await client.post(f"/v1/leads?key={server}", json=lead), 401)


async def test_a_form_id_too_long_is_a_422_naming_it_once_the_caller_is_known(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    lead, long_id = {"email": "x@y.example"}, "f" * 101
    assert problem(await client.post(f"/v1/leads?form_id={long_id}", json=lead), 401)
    server = {"Authorization": f"Bearer {await server_key(app)}"}
    refused = problem(await client.post(f"/v1/leads?form_id={long_id}", json=lead, headers=server), 422)
    assert [error["field"] for error in refused["errors"]] == ["form_id"]
    assert (await client.post(f"/v1/leads?form_id={'f' * 100}", json=lead, headers=server)).status_code == 202


async def test_revoked_key_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    issued = await create_key(uow_of(app), name="old", kind="server", origins=[], forms=[])
    await revoke_key(uow_of(app), key_id=issued.key_id)
    problem(
        await client.post(
            "/v1/leads", json={"email": "x@y.example"}, headers={"Authorization": f"Bearer {issued.secret}"}
        ),
        401,
    )


async def test_public_form_key_posts_its_form_from_its_origin_and_nowhere_else(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    key = await form_key(app)
    lead = {"email": "a@b.example", "consent_marketing": "on"}
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = "email=a%40b.example&consent_marketing=on"

    allowed = await client.post(f"/v1/leads?form_id=contact&key={key}", content=body, headers={**form, "Origin": SITE})
    assert allowed.status_code == 202
    assert allowed.headers["access-control-allow-origin"] == SITE
    other_origin = await client.post(
        f"/v1/leads?form_id=contact&key={key}", content=body, headers={**form, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other_origin.headers
    problem(other_origin, 403)
    assert bad_fields(await client.post(f"/v1/leads?key={key}", json=lead)) == {"form_id"}
    await client.put("/v1/forms/other", json={**FORM, "name": "Other"}, headers=ADMIN)
    problem(await client.post(f"/v1/leads?form_id=other&key={key}", json=lead, headers={"Origin": SITE}), 403)


async def test_preflight_answers_for_the_form_origins_only(client: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = await client.options("/v1/leads?form_id=contact", headers={**preflight, "Origin": SITE})
    refused = await client.options("/v1/leads?form_id=contact", headers={**preflight, "Origin": "https://x.example"})

    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == SITE
    assert "POST" in allowed.headers["access-control-allow-methods"]
    problem(refused, 403)


async def test_allowed_redirect_answers_303_and_others_are_refused(client: httpx.AsyncClient) -> None:
    form = {**ADMIN, "content-type": "application/x-www-form-urlencoded"}
    good = f"email=r%40s.example&form_id=contact&consent_marketing=on&redirect_to={SITE}/thanks"
    bad = "email=r%40s.example&form_id=contact&consent_marketing=on&redirect_to=https://evil.example/"

    redirected = await client.post("/v1/leads", content=good, headers=form)
    assert redirected.status_code == 303
    assert redirected.headers["location"] == f"{SITE}/thanks"
    assert bad_fields(await client.post("/v1/leads", content=bad, headers=form)) == {"redirect_to"}


async def test_form_requiring_consent_refuses_a_lead_without_it(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/leads", json={"email": "bad", "form_id": "contact"}, headers=ADMIN)
    assert bad_fields(answer) == {"email", "consent_marketing"}


async def test_honeypot_drops_a_bot_silently(app: FastAPI, client: httpx.AsyncClient) -> None:
    body = "email=bot%40spam.example&_gotcha=http://spam.example"
    answer = await client.post(
        "/v1/leads", content=body, headers={**ADMIN, "content-type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 202
    problem(await client.get(f"/v1/leads/{answer.json()['lead_id']}", headers=ADMIN), 404)
    assert app.state.honeypot_drops == 1


async def test_a_client_over_its_rate_limit_gets_429_with_retry_after(app: FastAPI, client: httpx.AsyncClient) -> None:
    key = await form_key(app)
    answers = [
        await client.post(
            f"/v1/leads?form_id=contact&key={key}", json={"email": f"r{n}@x.example", "consent_marketing": True}
        )
        for n in range(6)
    ]
    assert [answer.status_code for answer in answers] == [202] * 5 + [429]
    refused = answers[-1]
    problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "5" and refused.headers["ratelimit-remaining"] == "0"


# --- Idempotency-Key ---------------------------------------------------------------------------------------------


async def test_retry_with_the_same_idempotency_key_gets_the_first_answer(client: httpx.AsyncClient) -> None:
    headers = {**ADMIN, "Idempotency-Key": '"order-1"'}
    first = await client.post("/v1/leads", json={"email": "i@k.example"}, headers=headers)
    retry = await client.post("/v1/leads", json={"email": "i@k.example"}, headers=headers)

    assert first.status_code == retry.status_code == 202
    assert retry.json() == first.json() == {"lead_id": first.json()["lead_id"], "status": "captured"}
    assert retry.headers["idempotent-replayed"] == "true"


async def test_same_key_with_another_body_is_refused(client: httpx.AsyncClient) -> None:
    headers = {**ADMIN, "Idempotency-Key": "k-2"}
    await client.post("/v1/leads", json={"email": "i@k.example"}, headers=headers)
    assert bad_fields(await client.post("/v1/leads", json={"email": "j@k.example"}, headers=headers)) == {
        "Idempotency-Key"
    }


async def test_concurrent_duplicate_gets_409(app: FastAPI, client: httpx.AsyncClient) -> None:
    body = b'{"email": "c@k.example"}'
    same = idempotency.fingerprint("POST", "/v1/leads", "application/json", body)
    await idempotency.claim(uow_of(app), principal="admin", key="k-3", request_fingerprint=same)

    answer = await client.post(
        "/v1/leads", content=body, headers={**ADMIN, "Idempotency-Key": "k-3", "content-type": "application/json"}
    )
    problem(answer, 409)


async def test_expired_key_starts_afresh(app: FastAPI, client: httpx.AsyncClient) -> None:
    headers = {**ADMIN, "Idempotency-Key": "k-4"}
    await client.post("/v1/leads", json={"email": "e@k.example"}, headers=headers)
    async with uow_of(app).transaction() as tx:
        await tx.session.execute(update(idempotency_keys).values(expires_at=utc_now() - timedelta(seconds=1)))

    again = await client.post("/v1/leads", json={"email": "e@k.example"}, headers=headers)
    assert again.status_code == 202
    assert "idempotent-replayed" not in again.headers
    assert again.json()["status"] == "merged"


# --- activities --------------------------------------------------------------------------------------------------


async def test_activities_are_recorded_held_or_refused(client: httpx.AsyncClient) -> None:
    lead_id = (await client.post("/v1/leads", json={"email": "act@k.example"}, headers=ADMIN)).json()["lead_id"]

    known = await client.post("/v1/activities", json={"lead_id": lead_id, "type": "pricing_page_view"}, headers=ADMIN)
    held = await client.post(
        "/v1/activities", json={"email": "Later@k.example", "type": "content_download"}, headers=ADMIN
    )
    unknown = await client.post("/v1/activities", json={"lead_id": "no-such-lead", "type": "page_view"}, headers=ADMIN)
    both = await client.post(
        "/v1/activities", json={"lead_id": lead_id, "email": "a@k.example", "type": "page_view"}, headers=ADMIN
    )

    assert (known.status_code, known.json()["status"]) == (202, "recorded")
    assert (held.status_code, held.json()["status"]) == (202, "held")
    problem(unknown, 404)
    problem(both, 422)
