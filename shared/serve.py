"""Run one service with uvicorn: the entry point behind `python -m services.<name>`."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from shared.logs import configure_logging
from shared.settings import ServiceSettings


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve `app` on the settings' host and port with JSON logs."""
    configure_logging(settings.service_name, settings.log_level)
    # Once started, the process's heap is frozen (shared.app): not for apps served in-process by tests.
    app.state.freeze_heap_when_started = True
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, timeout_graceful_shutdown=10
    )
