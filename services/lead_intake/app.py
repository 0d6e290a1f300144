"""Composition root of lead_intake."""

from fastapi import FastAPI

from services.lead_intake import admin_api, api, idempotency, import_api, store
from services.lead_intake.access import KeyStore
from services.lead_intake.batching import LeadCaptureBatcher
from services.lead_intake.cors import install_cors
from services.lead_intake.forms import FormRegistry
from services.lead_intake.settings import Settings
from shared.app import build_app
from shared.direct import route_of
from shared.ratelimit import RateLimiter
from shared.runtime import ServiceRuntime


def _wire(app: FastAPI, runtime: ServiceRuntime) -> None:
    app.state.key_resolver = KeyStore(runtime.uow).resolve
    app.state.forms = FormRegistry(runtime.uow)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the lead_intake app; connections open in its lifespan."""
    settings = settings or Settings()
    # The batcher's worker runs beside the relay: started with the runtime, cancelled when it stops.
    batcher = LeadCaptureBatcher()
    runtime = ServiceRuntime(
        settings,
        metadata=store.metadata,
        migrations=store.MIGRATIONS,
        background=[idempotency.purge_expired, batcher.run],
    )
    app = build_app(
        runtime,
        title="Baton lead intake",
        routers=[api.router, admin_api.router, import_api.router],
        on_started=_wire,
        direct_routes=[route_of(api.router, api.post_lead)],  # every submitted lead: the busiest route by far
    )
    app.state.rate_limiter = RateLimiter()
    app.state.lead_batcher = batcher
    app.state.honeypot_drops = 0
    install_cors(app)
    return app
