"""Routing's durable clocks: SLA deadlines and queues waiting for a rep, checked from the database every tick.

State lives in the database, so timers fire after restarts; row locks (SKIP LOCKED) and status checks make each
fire once with several replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from services.routing.service import assign_queued_leads, fire_due_sla_timers
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)


def sla_and_queue_ticker(interval_seconds: float) -> Callable[[UnitOfWork], Coroutine[Any, Any, None]]:
    """A background task firing due SLA timers and draining queues every `interval_seconds` (sooner while busy)."""

    async def run(uow: UnitOfWork) -> None:
        delay = interval_seconds
        while True:
            try:
                busy = await fire_due_sla_timers(uow) + await assign_queued_leads(uow)
                delay = 0.0 if busy else interval_seconds
            except Exception as exc:  # an outage: the rows are still there next tick
                log.warning("routing timers failed, retrying: %r", exc)
                delay = min(max(delay * 2, interval_seconds), 30.0)
            await asyncio.sleep(delay)  # poll: the database is the clock's source of truth

    return run
