"""Pure rules of lead intake: normalising what forms send, and merging a resubmission into the lead."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

import phonenumbers
import pycountry

# Addresses at these providers say nothing about the lead's company.
FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.jp", "hotmail.com", "outlook.com", "live.com",
        "msn.com", "icloud.com", "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.com", "gmx.de",
        "mail.com", "yandex.ru", "qq.com", "163.com", "docomo.ne.jp", "ezweb.ne.jp",
    }
)  # fmt: skip

SENIORITY_LEVELS = ("entry", "senior", "manager", "director", "vp", "c_level", "owner")
_SENIORITY_ALIASES = {
    "junior": "entry", "intern": "entry", "individual contributor": "entry", "ic": "entry",
    "lead": "senior", "head": "director", "vice president": "vp", "cxo": "c_level", "c-level": "c_level",
    "c level": "c_level", "executive": "c_level", "founder": "owner", "partner": "owner",
}  # fmt: skip
COMPANY_SIZES = ("1-10", "11-50", "51-200", "201-1000", "1001-5000", "5001+")


@dataclass(frozen=True)
class Lead:
    """A person marketing handed over: who they are, their company, where, what they care about, where from."""

    lead_id: str
    email: str
    captured_at: datetime
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    job_title: str | None = None
    seniority: str | None = None
    company: str | None = None
    company_domain: str | None = None
    company_size: str | None = None
    industry: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    interests: tuple[str, ...] = ()
    current_solution: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    form_id: str | None = None
    consent_marketing: bool | None = None
    consent_at: datetime | None = None
    consent_wording_version: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


LEAD_FIELDS = tuple(item.name for item in fields(Lead))


def lead_values(lead: Lead) -> dict[str, Any]:
    """The lead's fields by name. Shallow, unlike dataclasses.asdict (which deep-copies every value, datetimes
    included, at a cost per submission): the values are immutable but for `attributes`, which is copied."""
    values = {name: getattr(lead, name) for name in LEAD_FIELDS}
    values["attributes"] = dict(lead.attributes)
    return values


# Identity and first-touch facts: a resubmission never rewrites these.
_KEPT_ON_MERGE = frozenset({"lead_id", "email", "captured_at"})


def merge_lead(existing: Lead, submitted: Lead) -> tuple[Lead, dict[str, list[Any]]]:
    """The lead after a resubmission: new non-empty values win, interests and attributes accumulate.

    Returns the merged lead and the changes as {field: [old, new]} for the lead's history.
    """
    updates: dict[str, Any] = {}
    for item in fields(Lead):
        name = item.name
        old, new = getattr(existing, name), getattr(submitted, name)
        if name in _KEPT_ON_MERGE or new is None or new == () or new == {}:
            continue
        if name == "consent_at" and submitted.consent_marketing == existing.consent_marketing:
            continue  # consent given again is the same consent: keep when it was first given
        if name == "interests":
            new = tuple(dict.fromkeys((*old, *new)))
        elif name == "attributes":
            new = {**old, **new}
        if new != old:
            updates[name] = new
    changes = {name: [_plain(getattr(existing, name)), _plain(value)] for name, value in updates.items()}
    return replace(existing, **updates), changes


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def company_domain_of(email: str) -> str | None:
    """The company domain behind a business email; None for free-mail providers."""
    domain = email.rpartition("@")[2].lower()
    return None if not domain or domain in FREE_MAIL_DOMAINS else domain


def normalise_country(raw: str) -> str:
    """ISO 3166-1 alpha-2 code from a code (JP, JPN) or an English name (Japan); ValueError if unknown."""
    try:
        return str(pycountry.countries.lookup(raw.strip()).alpha_2)
    except LookupError:
        raise ValueError(f"unknown country {raw!r}: use an ISO 3166 code such as JP or DE") from None


def normalise_phone(raw: str, country: str | None) -> str:
    """E.164 form of a phone number, read in the lead's country when it has no +prefix; ValueError if invalid."""
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        raise ValueError(f"not a phone number: {raw!r}") from None
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        raise ValueError(f"not a valid phone number: {raw!r}" + ("" if country else " (add +country code)"))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_seniority(raw: str) -> str:
    """One of SENIORITY_LEVELS, from the level or a common way to say it; ValueError otherwise."""
    key = re.sub(r"\s+", " ", raw.strip().lower()).replace("_", " ")
    level = _SENIORITY_ALIASES.get(key, key.replace(" ", "_"))
    if level not in SENIORITY_LEVELS:
        raise ValueError(f"unknown seniority {raw!r}: use one of {', '.join(SENIORITY_LEVELS)}")
    return level


def normalise_company_size(raw: str) -> str:
    """One of COMPANY_SIZES, also from a head count ("250" → "201-1000"); ValueError otherwise."""
    value = raw.strip().replace(" ", "").replace("\u2013", "-")  # an en dash, as typed in "11 to 50" ranges
    if value in COMPANY_SIZES:
        return value
    if value.isdigit():
        employees = int(value)
        bounds = ((10, "1-10"), (50, "11-50"), (200, "51-200"), (1000, "201-1000"), (5000, "1001-5000"))
        return next((band for limit, band in bounds if employees <= limit), "5001+")
    raise ValueError(f"unknown company size {raw!r}: use one of {', '.join(COMPANY_SIZES)} or a head count")
