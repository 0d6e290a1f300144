"""Webhook delivery: Standard Webhooks signatures checked by an independent receiver, the retry schedule, which
subscriptions get which event, and the dispatcher's bookkeeping on SQLite with a fake receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import admin, store, webhooks, webhooks_api
from services.routing.schemas import RepIn
from services.routing.service import route_scored_lead
from services.routing.settings import Settings
from services.routing.webhook_dispatcher import CONTENT_TYPE, WebhookDispatcher
from services.routing.webhook_signing import new_secret, sign, signed_headers
from services.routing.webhooks import RetryPolicy
from shared.app import build_app
from shared.envelope import CloudEvent
from shared.events import LeadRoutedV1, LeadScoredV1, RoutingKind
from shared.runtime import ServiceRuntime
from shared.uow import UnitOfWork
from tests.support.inprocess import ADMIN_KEY, offline_settings, running
from tests.unit.fakes import migrated_unit_of_work

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


# --- a receiver's verifier, written from the Standard Webhooks spec alone (not the product's signer) ---------------


class Rejected(Exception):
    """The receiver refuses the message."""


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: int, tolerance: int = 300) -> None:
    """What a sales tool does: recompute HMAC-SHA256 over `id.timestamp.body` with the base64-decoded key, accept
    any `v1,` signature in the space-separated list that matches, refuse timestamps more than 5 minutes off."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        raise Rejected("timestamp outside the tolerance")
    key = base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return
    raise Rejected("no matching signature")


def test_the_published_test_vector_is_reproduced() -> None:
    body = '{"test": 2432232314}'
    signature = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_receiver_verifies_what_baton_signs() -> None:
    secret, body = new_secret(), b'{"type":"dev.baton.lead.routed.v1"}'
    headers = signed_headers(secret, "msg_1", 1_700_000_000, body)
    verify(secret, headers, body, now=1_700_000_000 + 299)


def test_the_receiver_rejects_a_tampered_body() -> None:
    secret = new_secret()
    headers = signed_headers(secret, "msg_1", 1_700_000_000, b'{"rep_id":"rep-a"}')
    with pytest.raises(Rejected, match="signature"):
        verify(secret, headers, b'{"rep_id":"rep-z"}', now=1_700_000_000)


def test_the_receiver_rejects_a_stale_timestamp() -> None:
    secret, body = new_secret(), b"{}"
    headers = signed_headers(secret, "msg_1", 1_700_000_000, body)
    with pytest.raises(Rejected, match="timestamp"):
        verify(secret, headers, body, now=1_700_000_000 + 301)


def test_the_receiver_rejects_another_subscriptions_secret() -> None:
    headers = signed_headers(new_secret(), "msg_1", 1_700_000_000, b"{}")
    with pytest.raises(Rejected):
        verify(new_secret(), headers, b"{}", now=1_700_000_000)


def test_secrets_are_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32


# --- the retry schedule (pure) -------------------------------------------------------------------------------------


def test_retries_double_from_five_seconds_up_to_an_hour() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(attempts, spread=0.0).total_seconds() for attempts in range(1, 13)]
    assert delays == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert policy.delay(10_000, spread=0.0) == timedelta(hours=1)


def test_jitter_only_shortens_a_delay_by_up_to_a_fifth() -> None:
    policy = RetryPolicy()
    assert policy.delay(3, spread=0.999).total_seconds() == pytest.approx(16.0, abs=0.01)
    assert policy.delay(11, spread=0.5) == timedelta(minutes=54)


def test_the_last_retry_is_pulled_in_to_the_end_of_the_window_then_the_delivery_parks() -> None:
    policy = RetryPolicy(window=timedelta(hours=24))
    created = T0
    assert policy.next_attempt(attempts=1, created_at=created, now=T0, spread=0.0) == T0 + timedelta(seconds=5)
    almost = created + timedelta(hours=23, minutes=50)
    assert policy.next_attempt(attempts=20, created_at=created, now=almost, spread=0.0) == created + timedelta(hours=24)
    assert policy.next_attempt(attempts=21, created_at=created, now=created + timedelta(hours=24), spread=0.0) is None


def test_a_whole_day_of_failures_is_about_thirty_attempts() -> None:
    policy, now, attempts = RetryPolicy(), T0, 0
    while (next_at := policy.next_attempt(attempts=attempts + 1, created_at=T0, now=now, spread=0.0)) is not None:
        attempts, now = attempts + 1, next_at
    assert now == T0 + timedelta(hours=24)
    assert 30 <= attempts + 1 <= 35


# --- which subscriptions get an event (SQLite) ---------------------------------------------------------------------


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")


def _routed(kind: RoutingKind = "assigned", *, rep_id: str | None = "rep-a", team: str | None = "emea") -> LeadRoutedV1:
    return LeadRoutedV1(lead_id="lead-1", assignment_id="as-1", kind=kind, rep_id=rep_id, team=team,
                        reason="round robin", score=70, routed_at=T0)  # fmt: skip


async def _subscribe(uow: UnitOfWork, url: str = "https://crm.example/hook", **filters: Any) -> dict[str, Any]:
    async with uow.transaction() as tx:
        return await webhooks.add_subscription(
            tx.session, url=url, team=filters.get("team"), rep_id=filters.get("rep_id"),
            kinds=filters.get("kinds", []), now=T0,
        )  # fmt: skip


async def _enqueue(uow: UnitOfWork, routed: LeadRoutedV1) -> CloudEvent:
    async with uow.transaction() as tx:
        event = await tx.emit(routed)
        await webhooks.enqueue_deliveries(tx.session, event, routed)
    return event


async def _deliveries(uow: UnitOfWork, status: webhooks.DeliveryStatus | None = None) -> list[dict[str, Any]]:
    async with uow.read() as session:
        return await webhooks.list_deliveries(session, status=status, subscription_id=None, limit=100)


async def test_an_event_goes_to_every_subscription_that_asked_for_it(uow: UnitOfWork) -> None:
    wanted = {
        (await _subscribe(uow, "https://all.example/"))["subscription_id"],
        (await _subscribe(uow, team="emea"))["subscription_id"],
        (await _subscribe(uow, rep_id="rep-a"))["subscription_id"],
        (await _subscribe(uow, team="emea", rep_id="rep-a", kinds=["assigned", "reassigned"]))["subscription_id"],
    }
    await _subscribe(uow, team="apac")
    await _subscribe(uow, rep_id="rep-b")
    await _subscribe(uow, kinds=["accepted"])

    event = await _enqueue(uow, _routed("assigned", rep_id="rep-a", team="emea"))

    queued = await _deliveries(uow)
    assert {row["subscription_id"] for row in queued} == wanted
    assert all(row["event"] == event.to_structured() for row in queued)
    assert {(row["status"], row["attempts"], row["lead_id"]) for row in queued} == {("pending", 0, "lead-1")}
    assert len({row["delivery_id"] for row in queued}) == 4


async def test_an_event_without_a_rep_reaches_only_unfiltered_subscriptions(uow: UnitOfWork) -> None:
    everything = await _subscribe(uow)
    await _subscribe(uow, team="emea")
    await _subscribe(uow, rep_id="rep-a")
    await _enqueue(uow, _routed("unassigned", rep_id=None, team=None))
    assert [row["subscription_id"] for row in await _deliveries(uow)] == [everything["subscription_id"]]


async def test_no_subscription_no_delivery(uow: UnitOfWork) -> None:
    await _enqueue(uow, _routed())
    assert await _deliveries(uow) == []


async def test_a_routing_decision_queues_its_deliveries_in_its_own_transaction(uow: UnitOfWork) -> None:
    await admin.save_rep(uow, RepIn(name="Ann", email="ann@baton.example", team="emea"), rep_id="rep-a")
    subscription = await _subscribe(uow, team="emea")
    scored = LeadScoredV1(lead_id="lead-9", score=80, verdict="qualified", model_version="1", contributions=(),
                          scored_at=T0, grade="A1", lead={"lead_id": "lead-9", "email": "x@example.com"})  # fmt: skip
    async with uow.transaction() as tx:
        await route_scored_lead(tx, scored)
    [delivery] = await _deliveries(uow)
    assert delivery["subscription_id"] == subscription["subscription_id"]
    assert delivery["event"]["data"]["rep_id"] == "rep-a"
    assert delivery["event"]["type"] == "dev.baton.lead.routed.v1"


# --- the dispatcher with a fake receiver and a fake clock ----------------------------------------------------------


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Receiver:
    """A sales tool: answers with the next status code in line (the last one forever) and keeps every request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, text="" if status < 300 else "receiver exploded")


@pytest.fixture
async def queued(uow: UnitOfWork) -> dict[str, Any]:
    """One subscription with one pending delivery."""
    subscription = await _subscribe(uow)
    await _enqueue(uow, _routed())
    return subscription


def _dispatcher(uow: UnitOfWork, receiver: Receiver, clock: Clock, **policy: Any) -> WebhookDispatcher:
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    return WebhookDispatcher(uow, client, RetryPolicy(**policy), clock=clock, spread=lambda: 0.0)


async def _tick(dispatcher: WebhookDispatcher) -> int:
    started = await dispatcher.dispatch_due()
    await dispatcher.drain()
    return started


async def test_a_failing_receiver_is_retried_with_backoff_until_it_accepts(
    uow: UnitOfWork, queued: dict[str, Any]
) -> None:
    receiver, clock = Receiver(500, 503, 204), Clock(datetime.now(UTC))
    dispatcher = _dispatcher(uow, receiver, clock)

    assert await _tick(dispatcher) == 1
    [pending] = await _deliveries(uow)
    assert (pending["attempts"], pending["last_status_code"]) == (1, 500)
    assert pending["last_error"] == "HTTP 500: receiver exploded"
    assert pending["next_attempt_at"] == clock.now + timedelta(seconds=5)
    assert await _tick(dispatcher) == 0, "retried before its backoff ran out"
    clock.advance(seconds=5)
    assert await _tick(dispatcher) == 1
    clock.advance(seconds=10)
    assert await _tick(dispatcher) == 1

    [delivered] = await _deliveries(uow)
    assert (delivered["status"], delivered["attempts"], delivered["last_status_code"]) == ("delivered", 3, 204)
    assert delivered["delivered_at"] == clock.now and delivered["last_error"] is None
    assert {request.headers["webhook-id"] for request in receiver.requests} == {delivered["delivery_id"]}
    assert await _tick(dispatcher) == 0


async def test_each_attempt_is_a_signed_structured_cloudevent(uow: UnitOfWork, queued: dict[str, Any]) -> None:
    receiver, clock = Receiver(200), Clock(datetime.now(UTC))
    await _tick(_dispatcher(uow, receiver, clock))

    [request] = receiver.requests
    assert str(request.url) == "https://crm.example/hook" and request.method == "POST"
    assert request.headers["content-type"] == CONTENT_TYPE
    verify(queued["secret"], request.headers, request.content, now=int(clock.now.timestamp()))
    body = orjson.loads(request.content)
    assert (body["specversion"], body["type"], body["subject"]) == ("1.0", "dev.baton.lead.routed.v1", "lead-1")
    assert body["data"]["rep_id"] == "rep-a"


async def test_after_the_retry_window_a_delivery_is_parked_and_can_be_redelivered(
    uow: UnitOfWork, queued: dict[str, Any]
) -> None:
    receiver, clock = Receiver(500), Clock(datetime.now(UTC))
    dispatcher = _dispatcher(uow, receiver, clock, window=timedelta(minutes=1))
    await _tick(dispatcher)
    clock.advance(minutes=2)
    await _tick(dispatcher)

    [parked] = await _deliveries(uow, "parked")
    assert (parked["attempts"], parked["last_status_code"]) == (2, 500)
    clock.advance(hours=1)
    assert await _tick(dispatcher) == 0, "a parked delivery was retried"

    redelivered = await webhooks.redeliver(uow, delivery_id=parked["delivery_id"], now=clock.now)
    assert (redelivered["status"], redelivered["attempts"]) == ("pending", 0)
    receiver.statuses = [200]
    assert await _tick(dispatcher) == 1
    [delivered] = await _deliveries(uow, "delivered")
    assert (delivered["delivery_id"], delivered["attempts"]) == (parked["delivery_id"], 1)


async def test_an_unreachable_receiver_is_a_failed_attempt(uow: UnitOfWork, queued: dict[str, Any]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    clock = Clock(datetime.now(UTC))
    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    await _tick(WebhookDispatcher(uow, client, RetryPolicy(), clock=clock, spread=lambda: 0.0))
    [pending] = await _deliveries(uow, "pending")
    assert (pending["attempts"], pending["last_status_code"]) == (1, None)
    assert pending["last_error"] == "ConnectError: connection refused"


async def test_a_deleted_subscriptions_deliveries_go_with_it(uow: UnitOfWork, queued: dict[str, Any]) -> None:
    async with uow.transaction() as tx:
        assert await webhooks.delete_subscription(tx.session, subscription_id=queued["subscription_id"])
    assert await _deliveries(uow) == []


# --- the HTTP contract, in process -------------------------------------------------------------------------------


def _webhooks_app(settings: Settings) -> FastAPI:
    runtime = ServiceRuntime(settings, metadata=store.metadata, migrations=store.MIGRATIONS)
    return build_app(runtime, title="routing webhooks", routers=[webhooks_api.router])


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(_webhooks_app, offline_settings(Settings, tmp_path)) as (_, http):
        yield http


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    return problem


async def test_a_subscription_shows_its_secret_once(client: httpx.AsyncClient) -> None:
    body = {"url": "https://crm.example/hooks/baton", "team": "emea", "kinds": ["assigned", "reassigned"]}
    created = await client.post("/v1/webhooks/subscriptions", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    subscription = created.json()
    assert subscription["secret"].startswith("whsec_")
    assert (subscription["team"], subscription["rep_id"], subscription["active"]) == ("emea", None, True)

    listed = (await client.get("/v1/webhooks/subscriptions", headers=ADMIN)).json()
    assert [item["subscription_id"] for item in listed] == [subscription["subscription_id"]]
    assert "secret" not in listed[0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://crm.example/hook"}, "url"),
        ({"url": "crm.example/hook"}, "url"),
        ({"url": "https://crm.example/", "kinds": ["exploded"]}, "kinds.0"),
        ({"url": "https://crm.example/", "rep_id": "no spaces allowed"}, "rep_id"),
        ({"url": "https://crm.example/", "colour": "red"}, "colour"),
    ],
)
async def test_an_invalid_subscription_is_a_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    problem = _problem(await client.post("/v1/webhooks/subscriptions", json=body, headers=ADMIN), 422)
    assert field in [error["field"] for error in problem["errors"]]


async def test_writes_need_the_admin_key(client: httpx.AsyncClient) -> None:
    _problem(await client.post("/v1/webhooks/subscriptions", json={"url": "https://crm.example/"}), 401)
    _problem(await client.get("/v1/webhooks/deliveries"), 401)


async def test_unknown_ids_are_404s_naming_them(client: httpx.AsyncClient) -> None:
    problem = _problem(await client.delete("/v1/webhooks/subscriptions/sub_nope", headers=ADMIN), 404)
    assert "sub_nope" in problem["detail"]
    problem = _problem(await client.post("/v1/webhooks/deliveries/msg_nope/redeliver", headers=ADMIN), 404)
    assert "msg_nope" in problem["detail"]


async def test_a_subscription_can_be_deleted(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/webhooks/subscriptions", json={"url": "http://crm.example/"}, headers=ADMIN)
    subscription_id = created.json()["subscription_id"]
    assert (await client.delete(f"/v1/webhooks/subscriptions/{subscription_id}", headers=ADMIN)).status_code == 204
    assert (await client.get("/v1/webhooks/subscriptions", headers=ADMIN)).json() == []


async def test_the_dead_letter_list_and_redelivery(tmp_path: Path) -> None:
    async with running(_webhooks_app, offline_settings(Settings, tmp_path)) as (app, http):
        uow: UnitOfWork = app.state.runtime.uow
        await _subscribe(uow)
        await _enqueue(uow, _routed())
        [delivery] = await _deliveries(uow)
        pending = await http.post(f"/v1/webhooks/deliveries/{delivery['delivery_id']}/redeliver", headers=ADMIN)
        assert _problem(pending, 409)["current_status"] == "pending"

        await _park_everything(uow)
        listed = await http.get("/v1/webhooks/deliveries", params={"status": "parked"}, headers=ADMIN)
        assert [item["delivery_id"] for item in listed.json()] == [delivery["delivery_id"]]
        assert listed.json()[0]["event"]["subject"] == "lead-1"

        again = await http.post(f"/v1/webhooks/deliveries/{delivery['delivery_id']}/redeliver", headers=ADMIN)
        assert again.status_code == 202, again.text
        assert (again.json()["status"], again.json()["attempts"]) == ("pending", 0)
        assert (await http.get("/v1/webhooks/deliveries?status=parked", headers=ADMIN)).json() == []
        _problem(await http.get("/v1/webhooks/deliveries?status=lost", headers=ADMIN), 422)


async def _park_everything(uow: UnitOfWork) -> None:
    """One failed attempt with no retry window left parks every pending delivery."""
    await _tick(_dispatcher(uow, Receiver(500), Clock(datetime.now(UTC)), window=timedelta(0)))
