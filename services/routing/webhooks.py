"""Webhook delivery to sales tools (Standard Webhooks): subscriptions, signed deliveries, retries, parking.

A delivery row is written in the routing decision's own transaction (an outbox of HTTP calls), so a decision is
never lost and never waits for a sales tool; `webhook_dispatcher` sends the rows afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select, update

from services.routing.store import webhook_deliveries as deliveries
from services.routing.store import webhook_subscriptions as subscriptions
from services.routing.webhook_signing import new_secret
from shared.envelope import CloudEvent, utc_now
from shared.events import LeadRoutedV1
from shared.problems import ProblemError
from shared.sessions import DbSession
from shared.uow import UnitOfWork

DeliveryStatus = Literal["pending", "delivered", "parked"]


# --- retry policy (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff (first_retry, 2x, 4x... capped at max_delay, jittered down by up to a fifth) for at
    most `window` after the delivery was queued; then the delivery is parked."""

    window: timedelta = timedelta(hours=24)
    first_retry: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(hours=1)
    jitter: float = 0.2

    def delay(self, attempts: int, *, spread: float) -> timedelta:
        """The wait after the `attempts`-th failed attempt; `spread` in [0, 1) is random.random() in production."""
        doublings = min(max(attempts - 1, 0), 32)  # past an hour the cap applies anyway; keeps timedelta finite
        base: timedelta = min(self.first_retry * (1 << doublings), self.max_delay)
        return base * (1 - self.jitter * spread)

    def next_attempt(self, *, attempts: int, created_at: datetime, now: datetime, spread: float) -> datetime | None:
        """When to try again after a failed attempt, or None once the window has passed (park it). The last
        retry is pulled in to the window's end, so a delivery is tried right up to it."""
        deadline = created_at + self.window
        if now >= deadline:
            return None
        return min(now + self.delay(attempts, spread=spread), deadline)


# --- queueing, in the routing decision's transaction ---------------------------------------------------------------


def new_delivery_id() -> str:
    """A webhook-id: unique per message, kept across retries and redeliveries so receivers can deduplicate."""
    return f"msg_{uuid.uuid4().hex}"


def wants(subscription: dict[str, Any], routed: LeadRoutedV1) -> bool:
    """True if `subscription` asked for this routing event."""
    return (
        subscription["active"]
        and subscription["team"] in (None, routed.team)
        and subscription["rep_id"] in (None, routed.rep_id)
        and (not subscription["kinds"] or routed.kind in subscription["kinds"])
    )


async def enqueue_deliveries(session: DbSession, event: CloudEvent, routed: LeadRoutedV1) -> None:
    """Queue a delivery of `event` to every matching subscription, in the caller's transaction."""
    await enqueue_all_deliveries(session, [(event, routed)])


_ACTIVE_SUBSCRIPTIONS = select(subscriptions).where(subscriptions.c.active).order_by(subscriptions.c.subscription_id)


async def enqueue_all_deliveries(session: DbSession, published: Sequence[tuple[CloudEvent, LeadRoutedV1]]) -> None:
    """Queue a delivery of each event to every subscription that wants it, in the caller's transaction (the
    subscriptions are read once and the deliveries written with one statement, however many events)."""
    if not published:
        return
    active = [dict(row) for row in (await session.execute(_ACTIVE_SUBSCRIPTIONS)).mappings()]
    now = utc_now()
    rows = [
        {
            "delivery_id": new_delivery_id(), "subscription_id": subscription["subscription_id"],
            "lead_id": routed.lead_id, "event": event.to_structured(), "status": "pending", "attempts": 0,
            "next_attempt_at": now, "created_at": now,
        }
        for event, routed in published
        for subscription in active
        if wants(subscription, routed)
    ]  # fmt: skip
    if rows:
        await session.execute(deliveries.insert(), rows)


# --- subscriptions -------------------------------------------------------------------------------------------------


async def add_subscription(
    session: DbSession, *, url: str, team: str | None, rep_id: str | None, kinds: Sequence[str], now: datetime
) -> dict[str, Any]:
    """Store an active subscription with a fresh secret; returns it, secret included."""
    row = {
        "subscription_id": f"sub_{uuid.uuid4().hex}", "url": url, "secret": new_secret(), "team": team,
        "rep_id": rep_id, "kinds": sorted(set(kinds)), "active": True, "created_at": now,
    }  # fmt: skip
    await session.execute(subscriptions.insert().values(**row))
    return row


async def list_subscriptions(session: DbSession) -> list[dict[str, Any]]:
    """Every subscription, oldest first."""
    query = select(subscriptions).order_by(subscriptions.c.created_at, subscriptions.c.subscription_id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def load_subscriptions(session: DbSession, *, subscription_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The subscriptions with these ids, by id (deleted ones are absent)."""
    query = select(subscriptions).where(subscriptions.c.subscription_id.in_(subscription_ids))
    return {row["subscription_id"]: dict(row) for row in (await session.execute(query)).mappings()}


async def delete_subscription(session: DbSession, *, subscription_id: str) -> bool:
    """Remove a subscription and what it can no longer receive (pending and parked deliveries); deliveries that
    arrived stay as history. True if there was one."""
    result = await session.execute(delete(subscriptions).where(subscriptions.c.subscription_id == subscription_id))
    await session.execute(
        delete(deliveries).where(
            deliveries.c.subscription_id == subscription_id, deliveries.c.status.in_(("pending", "parked"))
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- deliveries ----------------------------------------------------------------------------------------------------


async def list_deliveries(
    session: DbSession, *, status: DeliveryStatus | None, subscription_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Deliveries, newest first; status "parked" is the dead-letter list."""
    query = select(deliveries).order_by(deliveries.c.created_at.desc(), deliveries.c.delivery_id).limit(limit)
    if status is not None:
        query = query.where(deliveries.c.status == status)
    if subscription_id is not None:
        query = query.where(deliveries.c.subscription_id == subscription_id)
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def load_delivery(session: DbSession, *, delivery_id: str, for_update: bool = False) -> dict[str, Any] | None:
    """One delivery, or None."""
    query = select(deliveries).where(deliveries.c.delivery_id == delivery_id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return dict(row) if row else None


async def redeliver(uow: UnitOfWork, *, delivery_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Send a parked (or delivered) delivery again, now, with a fresh retry window and the same webhook-id.
    404 if unknown; 409 if it is still pending or its subscription was deleted."""
    moment = now or utc_now()
    async with uow.transaction() as tx:
        row = await load_delivery(tx.session, delivery_id=delivery_id, for_update=True)
        if row is None:
            raise ProblemError(404, f"no webhook delivery {delivery_id}")
        if row["status"] == "pending":
            raise ProblemError(409, f"webhook delivery {delivery_id} is already pending", current_status="pending")
        if not await load_subscriptions(tx.session, subscription_ids=[row["subscription_id"]]):
            raise ProblemError(409, f"subscription {row['subscription_id']} of webhook delivery {delivery_id} "
                               "was deleted", current_status=row["status"])  # fmt: skip
        # created_at restarts the retry window: the event's own time is kept in its CloudEvent `time`.
        values = {"status": "pending", "attempts": 0, "next_attempt_at": moment, "created_at": moment,
                  "last_error": None, "last_status_code": None, "delivered_at": None}  # fmt: skip
        await tx.session.execute(update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(**values))
        return {**row, **values}


# --- dispatching: claim, then record the attempt's result -------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A delivery taken by one dispatcher for one attempt, with where to send it."""

    delivery_id: str
    url: str
    secret: str
    event: dict[str, Any]
    attempts: int
    created_at: datetime


async def claim_due(session: DbSession, *, now: datetime, limit: int, lease: timedelta) -> list[Claim]:
    """Take up to `limit` due deliveries by pushing their next attempt `lease` ahead. Rows another replica is
    claiming are skipped (SKIP LOCKED); a dispatcher that dies mid-attempt leaves them to be retried after the
    lease. Deliveries whose subscription is gone or paused are parked instead."""
    query = (
        select(deliveries)
        .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = [dict(row) for row in (await session.execute(query)).mappings()]
    if not rows:
        return []
    targets = await load_subscriptions(session, subscription_ids=sorted({row["subscription_id"] for row in rows}))
    claims, orphans = [], []
    for row in rows:
        target = targets.get(row["subscription_id"])
        if target is None or not target["active"]:
            orphans.append(row["delivery_id"])
            continue
        claims.append(Claim(row["delivery_id"], target["url"], target["secret"], row["event"], row["attempts"],
                            row["created_at"]))  # fmt: skip
    await _lease(session, [claim.delivery_id for claim in claims], until=now + lease)
    await _park_orphans(session, orphans)
    return claims


async def _lease(session: DbSession, delivery_ids: list[str], *, until: datetime) -> None:
    if delivery_ids:
        await session.execute(
            update(deliveries).where(deliveries.c.delivery_id.in_(delivery_ids)).values(next_attempt_at=until)
        )


async def _park_orphans(session: DbSession, delivery_ids: list[str]) -> None:
    if delivery_ids:
        await session.execute(
            update(deliveries)
            .where(deliveries.c.delivery_id.in_(delivery_ids))
            .values(status="parked", last_error="subscription deleted or inactive")
        )


async def record_attempt(
    session: DbSession,
    claim: Claim,
    *,
    status_code: int | None,
    error: str | None,
    now: datetime,
    next_attempt_at: datetime | None,
) -> bool:
    """Store an attempt's result: delivered when `error` is None, else pending until `next_attempt_at` (parked
    when None). Only the attempt that claimed the row records it; False if someone else already did."""
    values: dict[str, Any] = {"attempts": claim.attempts + 1, "last_status_code": status_code}
    if error is None:
        values.update(status="delivered", delivered_at=now, last_error=None)
    elif next_attempt_at is None:
        values.update(status="parked", last_error=error[:2000])
    else:
        values.update(next_attempt_at=next_attempt_at, last_error=error[:2000])
    result = await session.execute(
        update(deliveries)
        .where(
            deliveries.c.delivery_id == claim.delivery_id,
            deliveries.c.status == "pending",
            deliveries.c.attempts == claim.attempts,
        )
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
