"""Pure rules of lead intake: how a submission becomes a lead."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Addresses at these providers say nothing about the lead's company.
FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.jp",
        "hotmail.com",
        "outlook.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "gmx.com",
        "gmx.de",
        "mail.com",
        "yandex.ru",
        "qq.com",
        "163.com",
        "docomo.ne.jp",
        "ezweb.ne.jp",
    }
)


@dataclass(frozen=True)
class Lead:
    """A person marketing handed over, as lead_intake stores it."""

    lead_id: str
    email: str
    captured_at: datetime
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    company_domain: str | None = None
    job_title: str | None = None
    phone: str | None = None
    country: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    form_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def company_domain_of(email: str) -> str | None:
    """The company domain behind a business email; None for free-mail providers."""
    domain = email.rpartition("@")[2].lower()
    return None if not domain or domain in FREE_MAIL_DOMAINS else domain
