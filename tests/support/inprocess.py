"""A service app run in process on SQLite with an unreachable broker: enough to test its HTTP contract.

The outbox keeps every event (the relay retries quietly), so nothing a route does depends on Kafka.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from shared.settings import ServiceSettings

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
