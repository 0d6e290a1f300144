"""Composition root of scoring."""

from fastapi import FastAPI

from services.scoring import api, handlers, service, store
from services.scoring.settings import Settings
from shared.app import build_app
from shared.runtime import ServiceRuntime
from shared.uow import UnitOfWork


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the scoring app; connections open in its lifespan."""
    settings = settings or Settings()

    async def watch_cooling(uow: UnitOfWork) -> None:
        await service.watch_cooling(uow, every_seconds=settings.cooling_check_seconds)

    runtime = ServiceRuntime(
        settings,
        metadata=store.metadata,
        migrations=store.MIGRATIONS,
        consumes=handlers.CONSUMES,
        handlers=handlers.HANDLERS,
        background=[service.work_rescore_jobs, watch_cooling, service.keep_learning_from_held_outcomes],
    )
    return build_app(runtime, title="Baton scoring", routers=[api.router])
