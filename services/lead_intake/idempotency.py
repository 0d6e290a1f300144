"""Idempotency-Key (IETF httpapi draft): a retried request gets the first answer; a reused key with another body
is refused; a concurrent duplicate is told to wait. Keys expire after 24 hours."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from services.lead_intake.store import idempotency_keys
from shared.envelope import utc_now
from shared.problems import ProblemError
from shared.uow import Transaction, UnitOfWork

KEY_TTL = timedelta(hours=24)
# A claim older than this belongs to a request that died mid-way: a retry may take it over.
ABANDONED_AFTER = timedelta(seconds=60)
HEADER = "Idempotency-Key"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredResponse:
    """The first answer given under a key."""

    status: int
    body: bytes


def parse_key(raw: str) -> str:
    """The key from its header (a structured-field string, quoted, or a bare token); 422 if unusable."""
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > 255 or not key.isprintable():
        raise ProblemError(
            422, f"{HEADER} must be 1 to 255 printable characters", errors=[{"field": HEADER, "message": "invalid"}]
        )
    return key


def fingerprint(method: str, path: str, content_type: str, body: bytes) -> str:
    """What makes two requests 'the same request'."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), content_type.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


async def claim(uow: UnitOfWork, *, principal: str, key: str, request_fingerprint: str) -> StoredResponse | None:
    """Claim a key for this request; the stored answer if it was already answered; 409/422 problems otherwise."""
    now = utc_now()
    try:
        async with uow.transaction() as tx:
            where = (idempotency_keys.c.principal == principal, idempotency_keys.c.key == key)
            row = (await tx.session.execute(select(idempotency_keys).where(*where))).mappings().first()
            if row is not None and row["expires_at"] <= now:
                await tx.session.execute(delete(idempotency_keys).where(*where))
                row = None
            if row is None:
                await tx.session.execute(
                    idempotency_keys.insert().values(
                        principal=principal,
                        key=key,
                        fingerprint=request_fingerprint,
                        created_at=now,
                        expires_at=now + KEY_TTL,
                    )
                )
                return None
            if row["fingerprint"] != request_fingerprint:
                raise ProblemError(
                    422,
                    f"this {HEADER} was already used with a different request",
                    errors=[{"field": HEADER, "message": "reused with a different body"}],
                )
            if row["response_status"] is not None:
                return StoredResponse(row["response_status"], row["response_body"])
            if now - row["created_at"] < ABANDONED_AFTER:
                raise ProblemError(
                    409,
                    f"a request with this {HEADER} is still being processed; retry shortly",
                    headers={"Retry-After": "1"},
                )
            await tx.session.execute(update(idempotency_keys).where(*where).values(created_at=now))
            return None
    except IntegrityError:
        raise ProblemError(
            409, f"a request with this {HEADER} is being processed; retry shortly", headers={"Retry-After": "1"}
        ) from None


async def record(tx: Transaction, *, principal: str, key: str, response: StoredResponse) -> None:
    """Store the answer in the transaction that made the change, so the two cannot disagree."""
    await tx.session.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.principal == principal, idempotency_keys.c.key == key)
        .values(response_status=response.status, response_body=response.body)
    )


async def release(uow: UnitOfWork, *, principal: str, key: str) -> None:
    """Forget an unanswered claim after a failure, so the client may retry at once."""
    async with uow.transaction() as tx:
        await tx.session.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.principal == principal,
                idempotency_keys.c.key == key,
                idempotency_keys.c.response_status.is_(None),
            )
        )


async def purge_expired(uow: UnitOfWork, *, every_seconds: float = 3600.0) -> None:
    """Delete expired keys, forever, once per period."""
    while True:
        try:
            async with uow.transaction() as tx:
                await tx.session.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at <= utc_now()))
        except Exception as exc:  # an outage: try again next period
            log.warning("could not purge expired idempotency keys: %r", exc)
        await asyncio.sleep(every_seconds)
