"""Composition root of feedback."""

from fastapi import FastAPI

from services.feedback import api, dashboard, goals_api, handlers, reports_api, search_api, store
from services.feedback.service import keep_applying_held_outcomes
from services.feedback.settings import Settings
from shared.app import build_app
from shared.runtime import ServiceRuntime


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the feedback app; connections open in its lifespan."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        metadata=store.metadata,
        migrations=store.MIGRATIONS,
        consumes=handlers.CONSUMES,
        handlers=handlers.HANDLERS,
        raw_topics=handlers.RAW_TOPICS,
        background=[keep_applying_held_outcomes],
    )
    routers = [api.router, reports_api.router, goals_api.router, search_api.router, dashboard.router]
    return build_app(runtime, title="Baton feedback", routers=routers)
