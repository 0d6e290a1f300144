"""Reports, goals and lead search over HTTP, in process on SQLite (no broker needed to answer)."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.feedback import goals_api, reports_api, search_api, store
from services.feedback.aggregates import LeadCard
from services.feedback.app import create_app
from services.feedback.settings import Settings
from shared.uow import UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MAY_1 = datetime(2024, 5, 1, 9, tzinfo=UTC)
TODAY = datetime.now(UTC).date()


def with_routers(settings: Settings) -> FastAPI:
    """The feedback app with this module's routers, whether or not app.py includes them yet."""
    app = create_app(settings)
    known = {getattr(route, "path", None) for route in app.routes}
    for router in (reports_api.router, goals_api.router, search_api.router):
        if not {getattr(route, "path", None) for route in router.routes} <= known:
            app.include_router(router)
    return app


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running(with_routers, offline_settings(Settings, tmp_path)) as pair:
        yield pair


@pytest.fixture
def client(started: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return started[1]


async def save(app: FastAPI, *cards: LeadCard) -> None:
    uow: UnitOfWork = app.state.runtime.uow
    async with uow.transaction() as tx:
        for card in cards:
            await store.save_card(tx.session, None, card)


def won(lead_id: str, at: datetime, **values: Any) -> LeadCard:
    return LeadCard(
        lead_id=lead_id,
        captured_at=at,
        qualified_at=at,
        accepted_at=at,
        sql_at=at,
        state="won",
        won_amount=Decimal("1000.00"),
        **values,
    )


def problem_fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [error["field"] for error in response.json()["errors"]]


async def test_funnel_by_source_as_json_and_csv(started: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = started
    await save(
        app,
        won("a", MAY_1, source="webinar"),
        LeadCard(lead_id="b", captured_at=MAY_1, source="webinar", qualified_at=MAY_1),
        LeadCard(lead_id="c", captured_at=MAY_1 + timedelta(days=1), source="ads"),
        LeadCard(lead_id="d", captured_at=MAY_1 + timedelta(days=40), source="ads"),  # outside the range
    )
    query = {"from": "2024-05-01", "to": "2024-05-31", "group_by": "source"}
    response = await client.get("/v1/reports/funnel", params=query, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["report", "from", "to", "group_by", "rows", "totals"]
    assert (body["report"], body["from"], body["to"], body["group_by"]) == ("funnel", *query.values())
    assert [(row["group"], row["captured"], row["mql"], row["won"]) for row in body["rows"]] == [
        ("webinar", 2, 2, 1),
        ("ads", 1, 0, 0),
    ]
    assert body["rows"][0]["overall_rate"] == 0.5 and body["rows"][1]["mql_rate"] == 0.0
    assert body["rows"][1]["accept_rate"] is None
    assert body["totals"]["captured"] == 3 and body["totals"]["won"] == 1

    as_csv = await client.get("/v1/reports/funnel", params={**query, "format": "csv"}, headers=AUTH)
    assert as_csv.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(as_csv.text)))
    assert lines[0][:3] == ["group", "captured", "mql"]
    assert [line[:2] for line in lines[1:]] == [["webinar", "2"], ["ads", "1"], ["TOTAL", "3"]]
    accepted = await client.get("/v1/reports/funnel", params=query, headers={**AUTH, "Accept": "text/csv"})
    assert accepted.text == as_csv.text


async def test_revenue_amounts_are_decimal_strings(started: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = started
    await save(app, won("a", MAY_1, campaign="spring", last_campaign="retarget"))
    params = {"from": "2024-05-01", "to": "2024-05-01"}
    body = (await client.get("/v1/reports/revenue", params=params, headers=AUTH)).json()
    assert body["group_by"] == "campaign"
    assert body["totals"]["first_touch_revenue"] == "1000.00"
    assert {row["group"]: row["last_touch_revenue"] for row in body["rows"]} == {
        "spring": "0.00",
        "retarget": "1000.00",
    }


async def test_report_defaults_to_the_last_30_days_grouped_by_all(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/reports/speed", headers=AUTH)).json()
    assert body["to"] == TODAY.isoformat()
    assert body["from"] == (TODAY - timedelta(days=29)).isoformat()
    assert body["group_by"] == "all" and body["rows"] == [] and body["totals"]["assign_p90"] is None


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/reports/nope", {}, "report"),
        ("/v1/reports/funnel", {"group_by": "planet"}, "group_by"),
        ("/v1/reports/funnel", {"from": "2024-02-30"}, "from"),
        ("/v1/reports/funnel", {"to": "soon"}, "to"),
        ("/v1/reports/funnel", {"from": "2024-05-02", "to": "2024-05-01"}, "from"),
        ("/v1/reports/funnel", {"from": "2020-01-01", "to": "2024-01-01"}, "from"),
        ("/v1/reports/funnel", {"format": "xml"}, "format"),
    ],
)
async def test_bad_report_queries_are_422_naming_the_field(
    client: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    assert problem_fields(await client.get(path, params=params, headers=AUTH)) == [field]


async def test_reports_need_a_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/reports/funnel")).status_code == 401


async def test_goal_progress_over_the_period_so_far(started: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = started
    now = datetime.combine(TODAY, time(0, 30), tzinfo=UTC)
    await save(
        app,
        won("a", now, source="webinar"),
        won("b", now, source="webinar"),
        won("c", now, source="ads"),
        won("d", now - timedelta(days=40), source="webinar"),  # before the period
    )
    goal = {
        "name": "Webinar wins",
        "metric": "won",
        "target": 30,
        "period_start": (TODAY - timedelta(days=9)).isoformat(),
        "period_end": (TODAY + timedelta(days=20)).isoformat(),
        "dimension": "source",
        "value": "webinar",
        "owners": ["sales", "marketing"],
    }
    created = await client.post("/v1/goals", json=goal, headers=AUTH)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["owners"] == ["sales", "marketing"] and body["target"] == 30
    assert body["actual"] == 2 and body["progress"] == 0.0667
    assert body["expected_by_now"] == 10 and body["forecast"] == 6
    assert body["on_track"] is False and body["days_left"] == 20

    fetched = await client.get(f"/v1/goals/{body['goal_id']}", headers=AUTH)
    assert fetched.json()["actual"] == 2
    listed = (await client.get("/v1/goals", headers=AUTH)).json()["goals"]
    assert [item["goal_id"] for item in listed] == [body["goal_id"]]

    assert (await client.delete(f"/v1/goals/{body['goal_id']}", headers=AUTH)).status_code == 204
    assert (await client.get(f"/v1/goals/{body['goal_id']}", headers=AUTH)).status_code == 404
    assert (await client.delete(f"/v1/goals/{body['goal_id']}", headers=AUTH)).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "mood"}, "metric"),
        ({"target": 0}, "target"),
        ({"period_start": "2024-06-01", "period_end": "2024-05-01"}, "period_end"),
        ({"dimension": "planet", "value": "mars"}, "dimension"),
        ({"value": "webinar"}, "value"),
    ],
)
async def test_bad_goals_are_422_naming_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    goal = {"name": "g", "metric": "sql", "target": 5, "period_start": "2024-05-01", "period_end": "2024-05-31"}
    assert problem_fields(await client.post("/v1/goals", json={**goal, **change}, headers=AUTH)) == [field]


async def test_search_pages_newest_first_without_gaps_or_repeats(started: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = started
    same = MAY_1 + timedelta(hours=1)
    cards = [
        LeadCard(lead_id=f"lead-{n}", captured_at=MAY_1 + timedelta(minutes=n), source="ads", state="open")
        for n in range(5)
    ]
    twins = [LeadCard(lead_id=f"twin-{n}", captured_at=same, source="ads") for n in range(2)]
    other = LeadCard(lead_id="other", captured_at=MAY_1, source="webinar", won_amount=Decimal("12"))
    await save(app, *cards, *twins, other)

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"source": "ads", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/leads", params=params, headers=AUTH)).json()
        seen += [lead["lead_id"] for lead in page["leads"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["twin-1", "twin-0", "lead-4", "lead-3", "lead-2", "lead-1", "lead-0"]

    found = (await client.get("/v1/leads", params={"source": "webinar"}, headers=AUTH)).json()
    assert found["next_cursor"] is None
    assert found["leads"][0]["captured_at"] == MAY_1.isoformat() and found["leads"][0]["won_amount"] == "12.00"
    assert found["leads"][0]["interests"] == []


async def test_search_filters_by_capture_days_and_rep(started: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = started
    await save(
        app,
        LeadCard(lead_id="early", captured_at=MAY_1, rep_id="ann"),
        LeadCard(lead_id="late", captured_at=MAY_1 + timedelta(days=1, hours=14), rep_id="ann"),
        LeadCard(lead_id="bob", captured_at=MAY_1 + timedelta(days=1), rep_id="bob"),
    )
    params = {"rep": "ann", "from": "2024-05-02", "to": "2024-05-02"}
    found = (await client.get("/v1/leads", params=params, headers=AUTH)).json()
    assert [lead["lead_id"] for lead in found["leads"]] == ["late"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"2024-05-01|x").decode()}, "cursor"),  # no time zone
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"from": "2024-05-02", "to": "2024-05-01"}, "from"),
        ({"to": date(2024, 5, 1).strftime("%d/%m/%Y")}, "to"),
    ],
)
async def test_bad_search_queries_are_422_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    assert problem_fields(await client.get("/v1/leads", params=params, headers=AUTH)) == [field]
