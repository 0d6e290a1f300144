"""Group commit of submitted leads: the submissions that arrive while one transaction commits share the next one.

One worker takes everything queued whenever it is free, so a lone lead is stored at once (no timer, no linger) and
a burst costs a few transactions instead of one each. Every caller still waits for the commit of its own lead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.lead_intake.domain import Lead
from services.lead_intake.service import CaptureStatus, TraceHeaders, capture_submissions
from shared.failures import is_outage
from shared.tracing import trace_headers
from shared.uow import UnitOfWork

# Bounds one transaction's statements (an IN list, a multi-row insert): big enough that a burst drains at once.
MAX_BATCH = 500

Captured = tuple[str, CaptureStatus]
log = logging.getLogger(__name__)


class CaptureStopped(RuntimeError):
    """The service stopped before this lead was stored (or before its commit was confirmed)."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    lead: Lead
    trace: TraceHeaders  # the submitting request's: its events continue that trace, not the worker's
    answer: asyncio.Future[Captured]


class LeadCaptureBatcher:
    """Stores submitted leads in shared transactions, each lead exactly as if it had been submitted alone, in the
    order the submissions arrived; a lead that cannot be stored fails its own submission only."""

    def __init__(self, *, max_batch: int = MAX_BATCH) -> None:
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._in_flight: list[_Waiting] = []
        self._stopped = False

    async def capture(self, lead: Lead) -> Captured:
        """Store `lead`, or merge it into the lead with its email; returns (lead id, status) once committed."""
        if self._stopped:
            raise CaptureStopped("lead intake is stopping")
        answer: asyncio.Future[Captured] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Waiting(lead, trace_headers(), answer))
        return await answer

    async def run(self, uow: UnitOfWork) -> None:
        """Store queued leads until cancelled; submissions still waiting then fail with CaptureStopped."""
        self._stopped = False
        try:
            while True:
                self._in_flight = await self._next_batch()
                await self._store(uow, self._in_flight)
                self._in_flight = []
        finally:
            self._stopped = True
            _fail(self._in_flight, CaptureStopped("lead intake stopped before the lead's commit was confirmed"))
            while not self._queue.empty():
                _fail([self._queue.get_nowait()], CaptureStopped("lead intake stopped before storing the lead"))

    async def _next_batch(self) -> list[_Waiting]:
        batch = [await self._queue.get()]
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return [waiting for waiting in batch if not waiting.answer.done()]  # done: its caller gave up

    async def _store(self, uow: UnitOfWork, batch: list[_Waiting]) -> None:
        if not batch:
            return
        try:
            captured = await _capture(uow, batch)
        except Exception as exc:
            if is_outage(exc) or len(batch) == 1:
                _fail(batch, exc)
                return
            log.warning("a batch of %d leads failed (%r): storing them one by one", len(batch), exc)
            await _store_one_by_one(uow, batch)
            return
        for waiting, result in zip(batch, captured, strict=True):
            _resolve(waiting, result)


async def _store_one_by_one(uow: UnitOfWork, batch: Sequence[_Waiting]) -> None:
    """Isolate the lead that broke a batch: each lead in its own transaction, in order; an outage fails the rest."""
    for position, waiting in enumerate(batch):
        try:
            [result] = await _capture(uow, [waiting])
        except Exception as exc:
            _fail([waiting], exc)
            if is_outage(exc):
                _fail(batch[position + 1 :], exc)
                return
        else:
            _resolve(waiting, result)


async def _capture(uow: UnitOfWork, batch: Sequence[_Waiting]) -> list[Captured]:
    return await capture_submissions(
        uow, [waiting.lead for waiting in batch], traces=[waiting.trace for waiting in batch]
    )


def _resolve(waiting: _Waiting, result: Captured) -> None:
    if not waiting.answer.done():
        waiting.answer.set_result(result)


def _fail(batch: Sequence[_Waiting], exc: BaseException) -> None:
    for waiting in batch:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
