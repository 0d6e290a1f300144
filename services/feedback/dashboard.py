"""The live dashboard: a server-rendered page whose script draws the reports, and a stream that says when they moved.

The page itself needs no key (it holds no data); it asks for one and sends it on every call. The stream cannot
push the reports themselves cheaply, so it only says "changed": the page then asks the reports API again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Template

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import func, select

from services.feedback.store import goals, timeline
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.problems import ProblemError
from shared.sessions import DbSession
from shared.uow import UnitOfWork

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).parent / "static"
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
RANGES = (7, 30, 90)
DEFAULT_RANGE = 30
# The script and styles come from this service only; nothing inline, nothing from elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class DataMark:
    """What moves whenever report data may have moved: the newest journey step and the goals on file."""

    last_step: int
    goal_count: int
    last_goal_at: datetime | None


async def data_mark(session: DbSession) -> DataMark:
    """One cheap query: every event that changes a card also appends to the timeline."""
    query = select(
        select(func.max(timeline.c.id)).scalar_subquery(),
        select(func.count()).select_from(goals).scalar_subquery(),
        select(func.max(goals.c.created_at)).scalar_subquery(),
    )
    last_step, goal_count, last_goal_at = (await session.execute(query)).one()
    return DataMark(last_step=last_step or 0, goal_count=goal_count or 0, last_goal_at=last_goal_at)


async def _current_mark(uow: UnitOfWork) -> DataMark:
    async with uow.read() as session:
        return await data_mark(session)


def changed_event(version: int, mark: DataMark) -> str:
    """A server-sent `changed` event carrying the stream's version number and the data mark behind it."""
    data = {"version": version, "last_step": mark.last_step, "goals": mark.goal_count}
    return f"event: changed\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def report_changes(
    current_mark: Callable[[], Awaitable[DataMark]],
    disconnected: Callable[[], Awaitable[bool]],
    *,
    poll: float = POLL_SECONDS,
    keep_alive: float = KEEP_ALIVE_SECONDS,
) -> AsyncIterator[str]:
    """`changed` at once and then whenever the data mark moves; a comment line when quiet; ends when the client
    goes away (Starlette also cancels this generator on disconnect)."""
    version, last_mark, last_sent = 0, None, time.monotonic()
    yield "retry: 2000\n\n"
    while not await disconnected():
        mark = await current_mark()
        if mark != last_mark:
            version, last_mark, last_sent = version + 1, mark, time.monotonic()
            yield changed_event(version, mark)
        elif time.monotonic() - last_sent >= keep_alive:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll)  # poll


@router.get("/v1/dashboard/stream", response_class=StreamingResponse)
async def dashboard_stream(request: Request, uow: UowDep, _: PrincipalDep) -> StreamingResponse:
    """Server-sent events: `changed` with a version number whenever the reports may show something new."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    changes = report_changes(functools.partial(_current_mark, uow), request.is_disconnected)
    return StreamingResponse(changes, media_type="text/event-stream", headers=headers)


def _asset_version(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def render_page() -> str:
    """The page: panels with stable element ids, the range picker, the key form; the script fills the panels."""
    template = Template((STATIC / "dashboard.html").read_text())
    ranges = "".join(
        f'<button type="button" class="range" data-days="{days}" id="range-{days}"'
        f"{' aria-pressed=true' if days == DEFAULT_RANGE else ''}>{days} days</button>"
        for days in RANGES
    )
    return template.substitute(
        ranges=ranges,
        default_range=DEFAULT_RANGE,
        css_version=_asset_version("dashboard.css"),
        js_version=_asset_version("dashboard.js"),
    )


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    """The dashboard page (no key needed to load it: it holds no data until the viewer gives one)."""
    return HTMLResponse(render_page(), headers=PAGE_HEADERS)


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    """The page's script and styles, served from the static folder (only the files listed in ASSETS)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ProblemError(404, f"no dashboard asset {name!r}")
    headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=headers)
