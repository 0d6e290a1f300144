"""Composition root of scoring."""

from fastapi import FastAPI

from services.scoring import api, handlers, store
from services.scoring.settings import Settings
from shared.app import build_app
from shared.runtime import ServiceRuntime


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the scoring app; connections open in its lifespan."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        metadata=store.metadata,
        migrations=store.MIGRATIONS,
        consumes=handlers.CONSUMES,
        handlers=handlers.HANDLERS,
    )
    return build_app(runtime, title="Baton scoring", routers=[api.router])
