"""The dashboard page and its change stream over a real socket (uvicorn in process, SQLite, no broker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from services.feedback import dashboard, store
from services.feedback.app import create_app
from services.feedback.domain import JourneyStep
from services.feedback.settings import Settings
from shared.runtime import ServiceRuntime
from tests.support.inprocess import ADMIN_KEY, base_url, offline_settings, serving
from tests.support.polling import eventually

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
STABLE_IDS = ("funnel", "speed", "goals", "campaigns", "calibration", "live-status", "last-updated", "api-key")


@pytest.fixture
async def app(tmp_path: Path) -> FastAPI:
    """feedback with the dashboard router (its lifespan is run by the server)."""
    app = create_app(offline_settings(Settings, tmp_path))
    return app


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[uvicorn.Server]:
    """The app served on a free local port until the test ends."""
    async with serving(app) as served:
        yield served


async def add_step(app: FastAPI, lead_id: str) -> None:
    runtime: ServiceRuntime = app.state.runtime
    step = JourneyStep(lead_id, "captured", datetime.now(UTC), "lead_intake", "form", {})
    async with runtime.uow.transaction() as tx:
        await store.add_step(tx.session, event_id=str(uuid.uuid4()), step=step)


async def next_changed(lines: AsyncIterator[str]) -> dict[str, Any]:
    """The data of the next `changed` event, skipping comments and the retry hint."""
    event = ""
    async with asyncio.timeout(10):
        async for line in lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "changed":
                data: dict[str, Any] = orjson.loads(line.removeprefix("data: "))
                return data
    raise AssertionError("the stream ended")


async def test_the_stream_says_changed_at_once_and_again_when_a_step_lands_then_ends_with_the_client(
    app: FastAPI, server: uvicorn.Server
) -> None:
    client = httpx.AsyncClient(base_url=base_url(server), headers=AUTH)
    async with client, client.stream("GET", "/v1/dashboard/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await next_changed(lines) == {"version": 1, "last_step": 0, "goals": 0}
        await add_step(app, "lead-1")
        assert await next_changed(lines) == {"version": 2, "last_step": 1, "goals": 0}

    async def request_finished() -> bool:
        return not server.server_state.tasks

    await eventually(request_finished, timeout=10, message="the stream kept polling after the client left")


async def test_the_stream_needs_a_key_and_the_page_does_not(server: uvicorn.Server) -> None:
    async with httpx.AsyncClient(base_url=base_url(server)) as client:
        anonymous = await client.get("/v1/dashboard/stream")
        page = await client.get("/dashboard")
        script = await client.get("/dashboard/assets/dashboard.js")
        unknown = await client.get("/dashboard/assets/..%2Fdashboard.py")
    assert anonymous.status_code == 401
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert all(f'id="{name}"' in page.text for name in STABLE_IDS)
    assert "<script>" not in page.text and "http://" not in page.text and "https://" not in page.text
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert unknown.status_code == 404


async def test_a_quiet_stream_sends_a_keep_alive_comment_and_stops_when_the_client_leaves() -> None:
    mark = dashboard.DataMark(last_step=3, goal_count=0, last_goal_at=None)
    polls: list[str] = []

    async def same_mark() -> dashboard.DataMark:
        polls.append("mark")
        return mark

    async def gone_after_three_polls() -> bool:
        return len(polls) >= 3

    frames = dashboard.report_changes(same_mark, gone_after_three_polls, poll=0.001, keep_alive=0.0)
    seen = [frame async for frame in frames]

    assert seen == ["retry: 2000\n\n", dashboard.changed_event(1, mark), ": keep-alive\n\n", ": keep-alive\n\n"]
