"""HTTP routes of lead_intake: the front door for web forms."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, ValidationError, model_validator

from services.lead_intake.domain import Lead
from services.lead_intake.service import capture_lead, new_lead_id
from shared.app import UowDep
from shared.auth import PrincipalDep
from shared.envelope import utc_now
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["leads"])

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
MAX_BODY_BYTES = 32 * 1024
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class LeadSubmission(BaseModel):
    """A lead as a form or tool submits it."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    first_name: Text | None = None
    last_name: Text | None = None
    company: Text | None = None
    job_title: Text | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")] | None = None
    utm_source: Text | None = None
    utm_medium: Text | None = None
    utm_campaign: Text | None = None
    form_id: Text | None = None
    attributes: dict[
        Annotated[str, StringConstraints(max_length=100)], Annotated[str, StringConstraints(max_length=1000)]
    ] = Field(default_factory=dict, max_length=50)

    @model_validator(mode="before")
    @classmethod
    def _blank_means_absent(cls, fields: Any) -> Any:
        # Forms send empty inputs as "": that is "not given", never a value to store.
        if isinstance(fields, dict):
            return {name: value for name, value in fields.items() if not (isinstance(value, str) and not value.strip())}
        return fields

    def to_lead(self, lead_id: str) -> Lead:
        """The domain lead, with email and country normalised."""
        values = self.model_dump(exclude={"email", "country"})
        country = self.country.upper() if self.country else None
        return Lead(lead_id=lead_id, email=self.email.lower(), country=country, captured_at=utc_now(), **values)


class LeadAccepted(BaseModel):
    """The answer to a lead submission."""

    lead_id: str
    status: Literal["captured", "merged"]


_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LeadSubmission.model_json_schema()},
            FORM_CONTENT_TYPE: {"schema": LeadSubmission.model_json_schema()},
        },
    }
}


@router.post("/leads", status_code=202, response_model=LeadAccepted, openapi_extra=_REQUEST_BODY)
async def post_lead(request: Request, uow: UowDep, _: PrincipalDep) -> LeadAccepted:
    """Capture a lead from JSON or a plain HTML form post; 202 once it is stored."""
    submission = _validate(await _read_fields(request))
    lead_id, status = await capture_lead(uow, submission.to_lead(new_lead_id()))
    return LeadAccepted(lead_id=lead_id, status=status)


async def _read_fields(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ProblemError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == FORM_CONTENT_TYPE:
        return _form_fields(body)
    if content_type not in ("application/json", ""):
        raise ProblemError(415, f"unsupported content type {content_type!r}; send JSON or a form post")
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(422, "body is not valid JSON", errors=[{"field": "body", "message": str(exc)}]) from exc
    if not isinstance(fields, dict):
        raise ProblemError(422, "body must be a JSON object", errors=[{"field": "body", "message": "not an object"}])
    return fields


def _form_fields(body: bytes) -> dict[str, Any]:
    # Form fields Baton does not model travel as attributes, so any form can post as it is.
    known = set(LeadSubmission.model_fields)
    fields: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=False):
        (fields if name in known else attributes)[name] = value
    if attributes:
        fields["attributes"] = attributes
    return fields


def _validate(fields: dict[str, Any]) -> LeadSubmission:
    try:
        return LeadSubmission.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
