"""A service app run in process on SQLite with an unreachable broker: enough to test its HTTP contract.

The outbox keeps every event (the relay retries quietly), so nothing a route does depends on Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from shared.settings import ServiceSettings
from tests.support.polling import eventually

ADMIN_KEY = "admin-key"
S = TypeVar("S", bound=ServiceSettings)


def offline_settings(settings_class: type[S], tmp_path: Path, **overrides: Any) -> S:
    """Settings for one service on a fresh SQLite file, the admin key set, the broker nowhere."""
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'service.db'}",
        "kafka_bootstrap_servers": "127.0.0.1:1",
        "admin_key": ADMIN_KEY,
        "broker_timeout_seconds": 0.5,
        **overrides,
    }
    return settings_class(**values)


@asynccontextmanager
async def running(create_app: Callable[[S], FastAPI], settings: S) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan started, and a client talking to it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield app, client


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[uvicorn.Server]:
    """The app served by uvicorn on a free local port (for endless streams, which httpx's ASGI transport cannot
    read), its lifespan run by the server; stopped when the block ends."""
    served = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(served.serve())

    async def started() -> bool:
        return served.started

    await eventually(started, timeout=20, message="uvicorn did not start")
    try:
        yield served
    finally:
        served.should_exit = True
        await asyncio.wait_for(task, timeout=20)


def base_url(server: uvicorn.Server) -> str:
    """Where a served app listens."""
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"
