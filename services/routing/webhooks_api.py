"""HTTP routes of webhook delivery: subscriptions (secret shown once), deliveries, the dead-letter list, redelivery."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.routing import webhooks
from services.routing.schemas import Id, Tag
from services.routing.webhooks import DeliveryStatus
from shared.app import UowDep
from shared.auth import AdminDep, PrincipalDep
from shared.envelope import utc_now
from shared.events import RoutingKind
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["webhooks"])
IdPath = Annotated[str, Path(min_length=1, max_length=64)]


class SubscriptionIn(BaseModel):
    """Where to POST routing events, and which: only a team's or a rep's leads, only some kinds (none = all)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    team: Tag | None = None
    rep_id: Id | None = None
    kinds: list[RoutingKind] = Field(default_factory=list, max_length=20)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. https://crm.example/hooks/baton")
        return url


class SubscriptionOut(BaseModel):
    """A subscription as stored, without its secret."""

    subscription_id: str
    url: str
    team: str | None
    rep_id: str | None
    kinds: list[str]
    active: bool
    created_at: datetime


class CreatedSubscription(SubscriptionOut):
    """A new subscription with its signing secret, shown this once (Standard Webhooks `whsec_` form)."""

    secret: str


class DeliveryOut(BaseModel):
    """One event's delivery to one subscription; `delivery_id` is the webhook-id header the receiver sees."""

    delivery_id: str
    subscription_id: str
    lead_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    last_status_code: int | None
    created_at: datetime
    delivered_at: datetime | None
    event: dict[str, Any]


@router.post("/webhooks/subscriptions", status_code=201, response_model=CreatedSubscription)
async def post_subscription(body: SubscriptionIn, uow: UowDep, _: AdminDep) -> CreatedSubscription:
    """Subscribe a URL to routing events; the answer carries the signing secret, which is never shown again."""
    async with uow.transaction() as tx:
        row = await webhooks.add_subscription(
            tx.session, url=body.url, team=body.team, rep_id=body.rep_id, kinds=body.kinds, now=utc_now()
        )
    return CreatedSubscription.model_validate(row)


@router.get("/webhooks/subscriptions", response_model=list[SubscriptionOut])
async def get_subscriptions(uow: UowDep, _: PrincipalDep) -> list[SubscriptionOut]:
    """Every subscription (secrets are not shown)."""
    async with uow.read() as session:
        return [SubscriptionOut.model_validate(row) for row in await webhooks.list_subscriptions(session)]


@router.delete("/webhooks/subscriptions/{subscription_id}", status_code=204)
async def delete_subscription(subscription_id: IdPath, uow: UowDep, _: AdminDep) -> Response:
    """Stop delivering to a subscription; its pending and parked deliveries go with it."""
    async with uow.transaction() as tx:
        if not await webhooks.delete_subscription(tx.session, subscription_id=subscription_id):
            raise ProblemError(404, f"no webhook subscription {subscription_id}")
    return Response(status_code=204)


@router.get("/webhooks/deliveries", response_model=list[DeliveryOut])
async def get_deliveries(
    uow: UowDep,
    _: PrincipalDep,
    status: DeliveryStatus | None = None,
    subscription_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    """Deliveries, newest first; `status=parked` is the dead-letter list (retries gave up; redeliver them)."""
    async with uow.read() as session:
        rows = await webhooks.list_deliveries(session, status=status, subscription_id=subscription_id, limit=limit)
    return [DeliveryOut.model_validate(row) for row in rows]


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryOut)
async def post_redeliver(delivery_id: IdPath, uow: UowDep, _: AdminDep) -> DeliveryOut:
    """Send a parked (or delivered) delivery again now, with attempts reset and the same webhook-id.
    404 if unknown; 409 if it is still pending or its subscription was deleted."""
    return DeliveryOut.model_validate(await webhooks.redeliver(uow, delivery_id=delivery_id))
