"""Composition root of feedback."""

from fastapi import FastAPI

from services.feedback import api, handlers, store
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
    )
    return build_app(runtime, title="Baton feedback", routers=[api.router])
