"""GET /v1/stream over a real socket (uvicorn in process, SQLite, no broker): replay, live events, resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from services.routing import stream
from services.routing.app import create_app
from services.routing.settings import Settings
from shared.events import LeadRoutedV1
from shared.runtime import ServiceRuntime
from tests.support.inprocess import ADMIN_KEY, base_url, offline_settings, serving
from tests.support.polling import eventually
from tests.unit.test_routing_stream import routed

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
Event = tuple[int, str, str]  # id, event name, the CloudEvent's subject (the lead)


@pytest.fixture
async def app(tmp_path: Path) -> FastAPI:
    """The routing app with the stream's router (its lifespan is run by the server)."""
    app = create_app(offline_settings(Settings, tmp_path))
    return app


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[uvicorn.Server]:
    """The app served on a free local port until the test ends."""
    async with serving(app) as served:
        yield served


async def record(app: FastAPI, *decisions: LeadRoutedV1) -> None:
    runtime: ServiceRuntime = app.state.runtime
    async with runtime.uow.transaction() as tx:
        for decision in decisions:
            await stream.append_event(tx.session, await tx.emit(decision), decision)


async def next_events(lines: AsyncIterator[str], count: int) -> list[Event]:
    """The next `count` events of a text/event-stream, skipping comments and the retry hint."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(15):
        async for line in lines:
            if line == "" and "id" in fields:
                events.append((int(fields["id"]), fields["event"], orjson.loads(fields["data"])["subject"]))
                fields = {}
                if len(events) == count:
                    return events
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    raise AssertionError(f"the stream ended after {events}")


async def test_replays_a_reps_events_resumes_after_last_event_id_then_sends_live_ones(
    app: FastAPI, server: uvicorn.Server
) -> None:
    await record(app, routed("lead-1", "rep-a"), routed("lead-2", "rep-b"))
    await record(app, routed("lead-3", "rep-a", kind="reassigned"))
    async with httpx.AsyncClient(base_url=base_url(server), headers=AUTH) as client:
        async with client.stream("GET", "/v1/stream", params={"rep_id": "rep-a"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first, second = await next_events(response.aiter_lines(), 2)
        assert (first, second) == ((1, "assigned", "lead-1"), (3, "reassigned", "lead-3"))

        async def request_finished() -> bool:
            return not server.server_state.tasks

        await eventually(request_finished, timeout=10, message="the stream kept running after the client left")

        resume = {"Last-Event-ID": str(first[0])}
        async with client.stream("GET", "/v1/stream", params={"rep_id": "rep-a"}, headers=resume) as response:
            lines = response.aiter_lines()
            assert await next_events(lines, 1) == [second]
            await record(app, routed("lead-4", "rep-b"), routed("lead-5", "rep-a", kind="accepted"))
            assert await next_events(lines, 1) == [(5, "accepted", "lead-5")]


async def test_resumes_from_the_last_event_id_query_parameter_and_refuses_a_bad_one(
    app: FastAPI, server: uvicorn.Server
) -> None:
    await record(app, routed("lead-1", "rep-a"), routed("lead-2", "rep-b", team="apac"))
    async with httpx.AsyncClient(base_url=base_url(server), headers=AUTH) as client:
        query = {"last_event_id": "1"}
        async with client.stream("GET", "/v1/stream", params=query) as response:
            assert await next_events(response.aiter_lines(), 1) == [(2, "assigned", "lead-2")]
        refused = await client.get("/v1/stream", params={"last_event_id": "²"})
        anonymous = await client.get("/v1/stream", headers={"Authorization": ""})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "last_event_id"
    assert anonymous.status_code == 401
