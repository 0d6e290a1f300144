"""What forms and tools send to POST /v1/leads: reading the body (JSON or form post) and validating every field."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.lead_intake.domain import (
    Lead,
    normalise_company_size,
    normalise_country,
    normalise_phone,
    normalise_seniority,
)
from shared.emails import EmailAddress
from shared.envelope import utc_now
from shared.problems import ProblemError

MAX_BODY_BYTES = 32 * 1024
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
LIST_FIELDS = frozenset({"interests"})

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Interest = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
AttributeValue = Annotated[str, StringConstraints(max_length=1000)]


class LeadSubmission(BaseModel):
    """A lead as a form or tool submits it: contact, company, geography, interests, competitor, source, consent."""

    model_config = ConfigDict(extra="forbid")

    email: EmailAddress
    first_name: Text | None = None
    last_name: Text | None = None
    job_title: Text | None = None
    seniority: Text | None = None
    company: Text | None = None
    company_size: Text | None = None
    industry: Text | None = None
    country: Text | None = None
    region: Text | None = None
    city: Text | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    interests: list[Interest] = Field(default_factory=list, max_length=20)
    current_solution: Text | None = None
    utm_source: Text | None = None
    utm_medium: Text | None = None
    utm_campaign: Text | None = None
    utm_term: Text | None = None
    utm_content: Text | None = None
    referrer: Url | None = None
    landing_page: Url | None = None
    form_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")] | None = None
    consent_marketing: bool | None = None
    consent_wording_version: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(default_factory=dict, max_length=50)

    @model_validator(mode="before")
    @classmethod
    def _blank_means_absent(cls, fields: Any) -> Any:
        # Forms send empty inputs as "": that is "not given", never a value to store.
        if isinstance(fields, dict):
            return {name: value for name, value in fields.items() if not (isinstance(value, str) and not value.strip())}
        return fields

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str | None) -> str | None:
        return normalise_country(value) if value else None

    @field_validator("phone")
    @classmethod
    def _e164_phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        return normalise_phone(value, info.data.get("country")) if value else None

    @field_validator("seniority")
    @classmethod
    def _seniority_level(cls, value: str | None) -> str | None:
        return normalise_seniority(value) if value else None

    @field_validator("company_size")
    @classmethod
    def _size_band(cls, value: str | None) -> str | None:
        return normalise_company_size(value) if value else None

    def to_lead(self, lead_id: str) -> Lead:
        """The domain lead; consent, when given, is stamped with the time Baton received it."""
        now = utc_now()
        values = self.model_dump(exclude={"email", "interests"})
        return Lead(
            lead_id=lead_id,
            email=self.email.lower(),
            captured_at=now,
            interests=tuple(dict.fromkeys(self.interests)),
            consent_at=now if self.consent_marketing else None,
            **values,
        )


def parse_fields(content_type_header: str, body: bytes) -> dict[str, Any]:
    """The submitted fields of a JSON object or a form post (415 for other media types)."""
    content_type = content_type_header.split(";")[0].strip().lower()
    if content_type == FORM_CONTENT_TYPE:
        return form_fields(body)
    if content_type not in (JSON_CONTENT_TYPE, ""):
        raise ProblemError(415, f"unsupported content type {content_type!r}; send JSON or a form post")
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(422, "body is not valid JSON", errors=[{"field": "body", "message": str(exc)}]) from exc
    if not isinstance(fields, dict):
        raise ProblemError(422, "body must be a JSON object", errors=[{"field": "body", "message": "not an object"}])
    return fields


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, read no further than `limit` bytes (413 problem+json beyond)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProblemError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def form_fields(body: bytes) -> dict[str, Any]:
    """Form-post fields: repeated `interests` make a list; fields Baton does not model become attributes."""
    known = set(LeadSubmission.model_fields)
    fields: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if name in LIST_FIELDS:
            fields.setdefault(name, []).extend(part for part in value.split(",") if part.strip())
        elif name in known:
            fields[name] = value
        elif value.strip():
            attributes[name] = value
    if attributes:
        fields["attributes"] = {**attributes, **fields.get("attributes", {})}
    return fields


def validate_submission(fields: dict[str, Any]) -> LeadSubmission:
    """The validated submission; every bad field is reported at once (422 problem+json)."""
    try:
        return LeadSubmission.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
