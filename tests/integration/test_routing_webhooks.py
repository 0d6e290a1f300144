"""Webhook delivery on real PostgreSQL to a real HTTP receiver: retries until accepted, signatures a receiver can
verify, parking after the retry window, redelivery, a hung receiver holding up nobody, and two replicas never
sending one delivery twice.

Routing's runtime runs as the service would run it (migrations, dispatcher in the background, the webhook routes);
nothing here is emitted to Kafka, so the broker is left unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI

from services.routing import store, webhooks, webhooks_api
from services.routing.settings import Settings
from services.routing.webhook_dispatcher import CONCURRENCY, webhook_dispatcher
from shared.app import build_app
from shared.db import make_engine
from shared.events import LeadRoutedV1
from shared.runtime import ServiceRuntime
from shared.sessions import make_sessions
from shared.uow import UnitOfWork
from tests.support.infra import free_port
from tests.support.inprocess import ADMIN_KEY
from tests.support.polling import eventually
from tests.unit.test_routing_webhooks import verify

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
Message = dict[str, Any]


class Receiver:
    """A sales tool's webhook endpoint on a real port: answers with the next status in line (the last one
    forever), or never answers while `hang` is set; keeps every request's headers and raw body."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.hang = False
        self.release = asyncio.Event()
        # Requests are held until this many are in flight at once (then all go): proof of concurrent senders.
        self.hold_until_in_flight: int | None = None
        self.crowded = asyncio.Event()
        self.in_flight = self.peak_in_flight = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/baton"

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(({name.decode(): value.decode() for name, value in scope["headers"]}, body))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.hang:
            await self.release.wait()
        if self.hold_until_in_flight is not None:
            if self.in_flight >= self.hold_until_in_flight:
                self.crowded.set()
            with contextlib.suppress(TimeoutError):  # the last few never make a crowd: let them through
                await asyncio.wait_for(self.crowded.wait(), timeout=2.0)
        self.in_flight -= 1
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"no"})

    def ids(self) -> list[str]:
        """The webhook-id of every request, in arrival order."""
        return [headers["webhook-id"] for headers, _ in self.requests]


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """The receiver listening on its port until the block ends."""
    config = uvicorn.Config(receiver, host="127.0.0.1", port=receiver.port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), timeout=10, message="receiver listening")
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


def _settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url, database_schema=f"t_{uuid.uuid4().hex[:10]}", admin_key=ADMIN_KEY,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", broker_timeout_seconds=0.5,
    )  # fmt: skip


@asynccontextmanager
async def routing(
    settings: Settings, *, retry_hours: float = 24.0, timeout_seconds: float = 10.0
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Routing's runtime with the webhook dispatcher and routes wired as the app wires them; fast first retry."""
    dispatcher = webhook_dispatcher(0.05, retry_hours, first_retry_seconds=0.1, timeout_seconds=timeout_seconds)
    runtime = ServiceRuntime(settings, metadata=store.metadata, migrations=store.MIGRATIONS, background=[dispatcher])
    app = build_app(runtime, title="routing", routers=[webhooks_api.router])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://routing", headers=ADMIN) as client:
            yield app, client


async def subscribe(client: httpx.AsyncClient, url: str, **filters: Any) -> dict[str, Any]:
    """Subscribe through the API; the answer holds the secret."""
    response = await client.post("/v1/webhooks/subscriptions", json={"url": url, **filters})
    assert response.status_code == 201, response.text
    subscription: dict[str, Any] = response.json()
    return subscription


async def route_event(uow: UnitOfWork, *lead_ids: str) -> None:
    """What routing does with each decision: queue its deliveries in the decision's transaction (here, one
    transaction for all of `lead_ids`, so they become due at once)."""
    async with uow.transaction() as tx:
        for lead_id in lead_ids:
            routed = LeadRoutedV1(lead_id=lead_id, assignment_id=f"as-{lead_id}", kind="assigned", rep_id="rep-a",
                                  team="emea", reason="round robin", score=70, routed_at=datetime.now(UTC))  # fmt: skip
            await webhooks.enqueue_deliveries(tx.session, routed.to_event(source="/baton/routing"), routed)


async def deliveries(client: httpx.AsyncClient, status: str) -> list[dict[str, Any]]:
    """Deliveries with `status`, through the API."""
    response = await client.get("/v1/webhooks/deliveries", params={"status": status})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def _uow(app: FastAPI) -> UnitOfWork:
    uow: UnitOfWork = app.state.runtime.uow
    return uow


async def test_a_delivery_is_retried_until_accepted_and_every_attempt_is_signed(database_url: str) -> None:
    async with serving(Receiver(500, 500, 200)) as receiver, routing(_settings(database_url)) as (app, client):
        subscription = await subscribe(client, receiver.url, team="emea")
        await route_event(_uow(app), "lead-1")

        [delivered] = await eventually(lambda: deliveries(client, "delivered"), message="delivery accepted")

        assert (delivered["attempts"], delivered["last_status_code"], delivered["last_error"]) == (3, 200, None)
        assert receiver.ids() == [delivered["delivery_id"]] * 3
        for headers, body in receiver.requests:
            verify(subscription["secret"], headers, body, now=int(datetime.now(UTC).timestamp()))
            assert headers["content-type"] == "application/cloudevents+json"
            event = orjson.loads(body)
            assert (event["type"], event["subject"], event["data"]["rep_id"]) == (
                "dev.baton.lead.routed.v1", "lead-1", "rep-a",
            )  # fmt: skip


async def test_a_receiver_that_always_fails_ends_parked_and_redelivery_works(database_url: str) -> None:
    settings = _settings(database_url)
    async with serving(Receiver(503)) as receiver, routing(settings, retry_hours=1.5 / 3600) as (app, client):
        await subscribe(client, receiver.url)
        await route_event(_uow(app), "lead-1")

        [parked] = await eventually(lambda: deliveries(client, "parked"), message="delivery parked")
        assert parked["attempts"] >= 2 and parked["last_status_code"] == 503
        assert parked["last_error"] == "HTTP 503: no"
        assert len(receiver.requests) == parked["attempts"]

        receiver.statuses = [200]
        redelivered = await client.post(f"/v1/webhooks/deliveries/{parked['delivery_id']}/redeliver")
        assert redelivered.status_code == 202, redelivered.text

        [delivered] = await eventually(lambda: deliveries(client, "delivered"), message="redelivery accepted")
        assert (delivered["delivery_id"], delivered["attempts"]) == (parked["delivery_id"], 1)
        assert await deliveries(client, "parked") == []
        assert receiver.ids()[-1] == parked["delivery_id"]


async def test_a_hung_receiver_holds_up_no_other_subscription(database_url: str) -> None:
    hung, healthy = Receiver(200), Receiver(200)
    hung.hang = True
    async with (
        serving(hung),
        serving(healthy),
        routing(_settings(database_url), timeout_seconds=1.0) as (app, client),
    ):
        await subscribe(client, hung.url)
        await subscribe(client, healthy.url)
        await route_event(_uow(app), "lead-1")

        await eventually(lambda: _arrived(healthy, 1), message="healthy receiver served while the other hangs")
        assert len(hung.requests) >= 1

        [pending] = await eventually(lambda: _failed(client), message="hung attempt timed out and counted")
        assert "Timeout" in pending["last_error"]


async def _arrived(receiver: Receiver, count: int) -> bool:
    return len(receiver.requests) >= count


async def _failed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    return [row for row in await deliveries(client, "pending") if row["attempts"] >= 1]


async def test_two_replicas_never_send_one_delivery_twice(database_url: str) -> None:
    settings = _settings(database_url)
    slow = Receiver(200)
    slow.hold_until_in_flight = CONCURRENCY + 1  # more than one replica's slots must be sending at once
    async with serving(slow) as receiver, routing(settings) as (app, client):
        await subscribe(client, receiver.url)
        await subscribe(client, receiver.url + "?copy=2")
        second_replica = make_engine(settings.resolved_database_url(), schema=settings.resolved_database_schema())
        uow = UnitOfWork(make_sessions(second_replica), store.metadata, source="/baton/routing")
        replica = asyncio.create_task(webhook_dispatcher(0.05, 24.0)(uow))
        try:
            await route_event(_uow(app), *(f"lead-{number}" for number in range(40)))
            await eventually(lambda: _all_delivered(client, 80), message="every delivery accepted")
        finally:
            replica.cancel()
            await asyncio.gather(replica, return_exceptions=True)
            await second_replica.dispose()

        sent = Counter(receiver.ids())
        assert len(sent) == 80
        assert max(sent.values()) == 1, [key for key, times in sent.items() if times > 1]
        assert receiver.peak_in_flight > CONCURRENCY, "only one replica was sending"


async def _all_delivered(client: httpx.AsyncClient, count: int) -> bool:
    response = await client.get("/v1/webhooks/deliveries", params={"status": "delivered", "limit": 1000})
    return len(response.json()) == count
