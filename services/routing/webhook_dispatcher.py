"""Sends queued webhook deliveries: claim in a short transaction, POST outside any transaction, record the result
in another. Several replicas may run it: a claimed row is leased to one of them (SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson

from services.routing.webhook_signing import signed_headers
from services.routing.webhooks import Claim, RetryPolicy, claim_due, record_attempt
from shared.envelope import utc_now
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
USER_AGENT = "Baton-Webhooks/1"
TIMEOUT_SECONDS = 10.0
# Longer than any attempt can take, so a live dispatcher's claim never expires under it.
LEASE = timedelta(seconds=60)
CONCURRENCY = 20
ERROR_SNIPPET_BYTES = 500


@dataclass(frozen=True)
class Attempt:
    """What one POST got: `error` is None when the receiver answered 2xx."""

    status_code: int | None
    error: str | None


async def send(client: httpx.AsyncClient, claim: Claim, *, now: datetime, timeout_seconds: float) -> Attempt:
    """POST the structured CloudEvent, signed for this attempt; never raises, whatever the receiver does."""
    body = orjson.dumps(claim.event)
    headers = {
        "content-type": CONTENT_TYPE,
        "user-agent": USER_AGENT,
        **signed_headers(claim.secret, claim.delivery_id, int(now.timestamp()), body),
    }
    try:
        async with (
            asyncio.timeout(timeout_seconds),  # a total deadline: httpx's own timeouts are per read
            client.stream("POST", claim.url, content=body, headers=headers) as response,
        ):
            snippet = await _first_bytes(response)
    except Exception as exc:  # refused, reset, timed out, bad URL: all are a failed attempt
        return Attempt(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if response.is_success:
        return Attempt(response.status_code, None)
    return Attempt(response.status_code, f"HTTP {response.status_code}: {snippet}".strip())


async def _first_bytes(response: httpx.Response) -> str:
    # Enough of the answer to explain a failure; a receiver's huge body is never read whole.
    taken = b""
    async for chunk in response.aiter_bytes():
        taken += chunk
        if len(taken) >= ERROR_SNIPPET_BYTES:
            break
    return taken[:ERROR_SNIPPET_BYTES].decode("utf-8", "replace")


class WebhookDispatcher:
    """Claims due deliveries and sends each in its own task, at most `concurrency` at once, so one slow sales
    tool never holds up the others."""

    def __init__(
        self,
        uow: UnitOfWork,
        client: httpx.AsyncClient,
        policy: RetryPolicy,
        *,
        concurrency: int = CONCURRENCY,
        timeout_seconds: float = TIMEOUT_SECONDS,
        lease: timedelta = LEASE,
        clock: Callable[[], datetime] = utc_now,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self._uow = uow
        self._client = client
        self._policy = policy
        self._concurrency = concurrency
        self._timeout = timeout_seconds
        self._lease = lease
        self._clock = clock
        self._spread = spread
        self._in_flight: set[asyncio.Task[None]] = set()

    async def dispatch_due(self) -> int:
        """Claim what is due (as many as there are free slots) and start sending it; returns how many started."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        async with self._uow.transaction() as tx:
            claims = await claim_due(tx.session, now=self._clock(), limit=free, lease=self._lease)
        for claim in claims:
            task = asyncio.create_task(self.deliver(claim), name=f"webhook-{claim.delivery_id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(claims)

    async def drain(self) -> None:
        """Wait for every attempt started so far to be recorded."""
        await asyncio.gather(*self._in_flight)

    async def deliver(self, claim: Claim) -> None:
        """One attempt of a claimed delivery, then its result (or its next retry, or parking) stored."""
        attempt = await send(self._client, claim, now=self._clock(), timeout_seconds=self._timeout)
        now = self._clock()
        next_at = None
        if attempt.error is not None:
            next_at = self._policy.next_attempt(
                attempts=claim.attempts + 1, created_at=claim.created_at, now=now, spread=self._spread()
            )
            log.info("webhook %s to %s failed (%s); %s", claim.delivery_id, claim.url, attempt.error,
                     f"retrying at {next_at.isoformat()}" if next_at else "parked")  # fmt: skip
        try:
            async with self._uow.transaction() as tx:
                await record_attempt(tx.session, claim, status_code=attempt.status_code, error=attempt.error,
                                     now=now, next_attempt_at=next_at)  # fmt: skip
        except Exception as exc:  # the lease runs out and the delivery is sent again: at least once
            log.warning(
                "could not record webhook %s's attempt; it is retried after its lease: %r", claim.delivery_id, exc
            )

    async def run(self, poll_seconds: float) -> None:
        """Dispatch until cancelled; in-flight attempts are cancelled with it (their leases expire, then retry)."""
        delay = poll_seconds
        try:
            while True:
                try:
                    started = await self.dispatch_due()
                    delay = 0.0 if started and len(self._in_flight) < self._concurrency else poll_seconds
                except Exception as exc:  # an outage: the rows are still there next tick
                    log.warning("webhook dispatch failed, retrying: %r", exc)
                    delay = min(max(delay * 2, poll_seconds), 30.0)
                await asyncio.sleep(delay)  # poll: the database is the queue
        finally:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)


def webhook_dispatcher(
    poll_seconds: float,
    retry_hours: float,
    *,
    first_retry_seconds: float = 5.0,
    timeout_seconds: float = TIMEOUT_SECONDS,
) -> Callable[[UnitOfWork], Coroutine[Any, Any, None]]:
    """A background task sending webhook deliveries, retrying with backoff for `retry_hours`, then parking them."""
    policy = RetryPolicy(window=timedelta(hours=retry_hours), first_retry=timedelta(seconds=first_retry_seconds))

    async def run(uow: UnitOfWork) -> None:
        async with httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False) as client:
            dispatcher = WebhookDispatcher(uow, client, policy, timeout_seconds=timeout_seconds)
            await dispatcher.run(poll_seconds)

    return run
