"""Composition root of routing."""

from fastapi import FastAPI

from services.routing import api, handlers, reps_import_api, store, stream, stream_api, webhooks_api
from services.routing.settings import Settings
from services.routing.timers import sla_and_queue_ticker
from services.routing.webhook_dispatcher import webhook_dispatcher
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
        background=[
            sla_and_queue_ticker(settings.timer_interval_seconds),
            webhook_dispatcher(settings.webhook_poll_seconds, settings.webhook_retry_hours),
            stream.stream_pruner(),
        ],
    )
    routers = [api.router, reps_import_api.router, webhooks_api.router, stream_api.router]
    return build_app(runtime, title="Baton routing", routers=routers)
