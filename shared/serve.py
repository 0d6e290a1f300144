"""Run one service with uvicorn: the entry point behind `python -m services.<name>`."""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from shared.logs import configure_logging
from shared.settings import ServiceSettings


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve `app` on the settings' host and port with JSON logs."""
    configure_logging(settings.service_name, settings.log_level)
    lower_cpu_priority(settings.cpu_niceness)
    # Once started, the process's heap is frozen (shared.app): not for apps served in-process by tests.
    app.state.freeze_heap_when_started = True
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, timeout_graceful_shutdown=10
    )


def lower_cpu_priority(niceness: int) -> None:
    """Raise this process's niceness to `niceness` (never lower it: that takes privileges). Within one machine or
    one container's share of it, the scheduler then runs the other services first whenever they want the CPU."""
    current = os.nice(0)
    if niceness > current:
        os.nice(niceness - current)
