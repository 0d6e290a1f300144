"""API keys of lead_intake: public form keys and server keys, stored hashed, resolved with a short cache."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, update

from services.lead_intake.store import api_keys
from shared.auth import Principal
from shared.envelope import utc_now
from shared.sessions import DbSession
from shared.uow import UnitOfWork

KeyKind = Literal["form", "server"]
SUBMIT_LEADS, IMPORT_LEADS, READ_LEADS = "leads:submit", "leads:import", "leads:read"
# Privacy officers erase leads on request; admin keys can too.
ERASE_LEADS = "privacy:erase"
SUBMIT_ACTIVITIES = "activities:submit"
SCOPES_BY_KIND: dict[str, frozenset[str]] = {
    # Public: embedded in web pages, so it can only submit, and only for its forms and origins.
    "form": frozenset({SUBMIT_LEADS, SUBMIT_ACTIVITIES}),
    "server": frozenset({SUBMIT_LEADS, IMPORT_LEADS, READ_LEADS, SUBMIT_ACTIVITIES}),
    "privacy": frozenset({READ_LEADS, ERASE_LEADS}),
}
KEY_PREFIX = "bk"
CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class IssuedKey:
    """A key as shown once to the operator who created it."""

    key_id: str
    kind: str
    secret: str


def _hash(secret: str) -> str:
    # The secret is 32 random bytes, so a fast hash suffices: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a presented `bk_<id>_<secret>` key, or None if it has another shape."""
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    return (key_id, secret) if prefix == KEY_PREFIX and key_id and secret else None


async def create_key(uow: UnitOfWork, *, name: str, kind: KeyKind, origins: list[str], forms: list[str]) -> IssuedKey:
    """Create a key; its secret is returned here and never stored."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    async with uow.transaction() as tx:
        await tx.session.execute(
            api_keys.insert().values(
                key_id=key_id,
                name=name,
                kind=kind,
                scopes=sorted(SCOPES_BY_KIND[kind]),
                allowed_origins=origins,
                allowed_forms=forms,
                secret_hash=_hash(secret),
                created_at=utc_now(),
            )
        )
    return IssuedKey(key_id=key_id, kind=kind, secret=f"{KEY_PREFIX}_{key_id}_{secret}")


async def list_keys(session: DbSession) -> list[dict[str, Any]]:
    """Every key, without secrets."""
    query = select(api_keys).order_by(api_keys.c.created_at)
    return [{k: v for k, v in row.items() if k != "secret_hash"} for row in (await session.execute(query)).mappings()]


async def revoke_key(uow: UnitOfWork, *, key_id: str) -> bool:
    """Revoke a key; False if there is no such active key."""
    async with uow.transaction() as tx:
        result = await tx.session.execute(
            update(api_keys)
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
    return bool(getattr(result, "rowcount", 0))


class KeyStore:
    """Resolves presented keys to principals; answers are cached briefly, so a revocation takes effect within
    CACHE_SECONDS on every replica."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def resolve(self, presented: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise."""
        cached = self._cache.get(presented)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        principal = await self._load(presented)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[presented] = (time.monotonic(), principal)
        return principal

    async def _load(self, presented: str) -> Principal | None:
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        async with self._uow.read() as session:
            row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).mappings().first()
        if (
            row is None
            or row["revoked_at"] is not None
            or not secrets.compare_digest(row["secret_hash"], _hash(secret))
        ):
            return None
        return Principal(
            name=key_id,
            kind=row["kind"],
            scopes=frozenset(row["scopes"]),
            allowed_origins=frozenset(row["allowed_origins"]),
            allowed_forms=frozenset(row["allowed_forms"]),
        )
