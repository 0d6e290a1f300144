"""Composition root of lead_intake."""

from fastapi import FastAPI

from services.lead_intake import api, store
from services.lead_intake.settings import Settings
from shared.app import build_app
from shared.runtime import ServiceRuntime


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the lead_intake app; connections open in its lifespan."""
    settings = settings or Settings()
    runtime = ServiceRuntime(settings, metadata=store.metadata, migrations=store.MIGRATIONS)
    return build_app(runtime, title="Baton lead intake", routers=[api.router])
