"""Registered forms: where they may be posted from, where they may redirect to, what they require."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from services.lead_intake.store import forms
from shared.envelope import utc_now
from shared.sessions import DbSession
from shared.uow import UnitOfWork

DEFAULT_HONEYPOT_FIELD = "_gotcha"
CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class FormPolicy:
    """What a registered form allows."""

    form_id: str
    name: str
    allowed_origins: frozenset[str]
    redirect_urls: frozenset[str]
    requires_consent: bool
    honeypot_field: str


UNREGISTERED = FormPolicy("", "", frozenset(), frozenset(), False, DEFAULT_HONEYPOT_FIELD)


def _policy(row: Any) -> FormPolicy:
    return FormPolicy(
        form_id=row["form_id"],
        name=row["name"],
        allowed_origins=frozenset(row["allowed_origins"]),
        redirect_urls=frozenset(row["redirect_urls"]),
        requires_consent=row["requires_consent"],
        honeypot_field=row["honeypot_field"],
    )


async def save_form(uow: UnitOfWork, policy: FormPolicy) -> None:
    """Create or replace a form's policy."""
    async with uow.transaction() as tx:
        await tx.session.execute(delete(forms).where(forms.c.form_id == policy.form_id))
        await tx.session.execute(
            forms.insert().values(
                form_id=policy.form_id,
                name=policy.name,
                allowed_origins=sorted(policy.allowed_origins),
                redirect_urls=sorted(policy.redirect_urls),
                requires_consent=policy.requires_consent,
                honeypot_field=policy.honeypot_field,
                updated_at=utc_now(),
            )
        )


async def delete_form(uow: UnitOfWork, form_id: str) -> bool:
    """Remove a form; False if it did not exist."""
    async with uow.transaction() as tx:
        result = await tx.session.execute(delete(forms).where(forms.c.form_id == form_id))
    return bool(getattr(result, "rowcount", 0))


async def load_forms(session: DbSession) -> dict[str, FormPolicy]:
    """Every registered form, by id."""
    return {row["form_id"]: _policy(row) for row in (await session.execute(select(forms))).mappings()}


class FormRegistry:
    """The registered forms, cached briefly (replicas see a change within CACHE_SECONDS)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._forms: dict[str, FormPolicy] = {}
        self._loaded_at = float("-inf")

    async def all(self) -> dict[str, FormPolicy]:
        """Every registered form."""
        if time.monotonic() - self._loaded_at > CACHE_SECONDS:
            async with self._uow.read() as session:
                self._forms = await load_forms(session)
            self._loaded_at = time.monotonic()
        return self._forms

    async def get(self, form_id: str | None) -> FormPolicy | None:
        """A registered form, or None."""
        return (await self.all()).get(form_id) if form_id else None

    async def known_origins(self) -> frozenset[str]:
        """Origins any registered form may be posted from."""
        return frozenset(origin for form in (await self.all()).values() for origin in form.allowed_origins)

    def forget(self) -> None:
        """Drop the cache after a change made here."""
        self._loaded_at = float("-inf")


def origin_allowed(origin: str | None, form: FormPolicy | None, key_origins: frozenset[str]) -> bool:
    """May a browser page at `origin` post this form with this key? No Origin (a server) is not a browser."""
    if origin is None:
        return True
    allowed: frozenset[str] | None = form.allowed_origins if form else None
    if key_origins:
        allowed = key_origins if allowed is None else allowed & key_origins
    return allowed is None or origin in allowed


def redirect_allowed(redirect_to: str, form: FormPolicy | None) -> bool:
    """Only the pages a registered form lists may be redirected to (no open redirects)."""
    return form is not None and redirect_to in form.redirect_urls
