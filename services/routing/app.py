"""Composition root of routing."""

from fastapi import FastAPI

from services.routing import api, handlers, store
from services.routing.settings import Settings
from shared.app import build_app
from shared.runtime import ServiceRuntime


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the routing app; connections open in its lifespan."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        metadata=store.metadata,
        migrations=store.MIGRATIONS,
        consumes=handlers.CONSUMES,
        handlers=handlers.HANDLERS,
    )
    return build_app(runtime, title="Baton routing", routers=[api.router])
