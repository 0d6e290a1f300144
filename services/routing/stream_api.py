"""GET /v1/stream: routing events as Server-Sent Events for inbox apps, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Final

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from services.routing import stream
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.problems import ProblemError
from shared.uow import UnitOfWork

router = APIRouter(prefix="/v1", tags=["stream"])

POLL_SECONDS: Final = 0.25
KEEPALIVE_SECONDS: Final = 15.0
PAGE_SIZE: Final = 200
# Tells EventSource how long to wait before reconnecting (milliseconds).
RECONNECT_MS: Final = 2000
FilterValue = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "routing events, then live ones"}},
)
async def get_stream(
    request: Request,
    uow: UowDep,
    _: PrincipalDep,
    rep_id: FilterValue = None,
    team: FilterValue = None,
    last_event_id: Annotated[str | None, Query()] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Every `leads.routed` event of a rep and/or team (none given: every event), as Server-Sent Events.

    Each event is `id: <seq>`, `event: <kind>` (assigned, reassigned, ...), `data: <CloudEvent JSON>`. Without
    Last-Event-ID (header, or `?last_event_id=`) the stream starts at the oldest event kept; with it, everything
    after that id is replayed, then new events follow as they are decided. `: keep-alive` comments every 15 s
    keep proxies from closing a quiet stream.
    """
    after = _resume_point(last_event_id_header or last_event_id)
    events = sse_stream(uow, request.is_disconnected, after_seq=after, rep_id=rep_id, team=team)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _resume_point(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return 0
    if not re.fullmatch(r"\s*[0-9]{1,18}\s*", raw):
        raise ProblemError(422, f"Last-Event-ID {raw!r} is not an event id of this stream", errors=[
            {"field": "last_event_id", "message": "must be a non-negative integer sent as an SSE id"}])  # fmt: skip
    return int(raw)


async def sse_stream(
    uow: UnitOfWork,
    is_disconnected: Callable[[], Awaitable[bool]],
    *,
    after_seq: int,
    rep_id: str | None,
    team: str | None,
    poll_seconds: float = POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """The text/event-stream body: stored events after `after_seq`, then new ones, until the client leaves."""
    yield f"retry: {RECONNECT_MS}\n\n"
    cursor, last_write = after_seq, time.monotonic()
    while not await is_disconnected():
        async with uow.read() as session:
            page = await stream.events_after(session, after_seq=cursor, rep_id=rep_id, team=team, limit=PAGE_SIZE)
        for event in page.events:
            yield event.sse()
            last_write = time.monotonic()
        if page.horizon > cursor:
            cursor = page.horizon
            continue  # catching up on stored events: no pause until there is nothing new
        if time.monotonic() - last_write >= keepalive_seconds:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        await asyncio.sleep(poll_seconds)  # poll
