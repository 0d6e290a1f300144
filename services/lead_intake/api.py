"""HTTP routes of lead_intake: the front door for web forms, tracking scripts and marketing tools."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from services.lead_intake import idempotency, store
from services.lead_intake.access import ERASE_LEADS, READ_LEADS, SUBMIT_ACTIVITIES, SUBMIT_LEADS
from services.lead_intake.batching import CaptureStopped, LeadCaptureBatcher
from services.lead_intake.domain import Lead
from services.lead_intake.erasure import erase_lead
from services.lead_intake.forms import (
    DEFAULT_HONEYPOT_FIELD,
    FormPolicy,
    FormRegistry,
    origin_allowed,
    redirect_allowed,
)
from services.lead_intake.service import (
    Activity,
    CaptureStatus,
    UnknownLead,
    capture_lead,
    new_lead_id,
    record_activity,
)
from services.lead_intake.submission import (
    FORM_CONTENT_TYPE,
    LeadSubmission,
    parse_fields,
    read_body,
    validate_submission,
)
from shared.auth import Principal, require, resolve_key
from shared.emails import EmailAddress
from shared.envelope import utc_now
from shared.problems import ProblemError
from shared.ratelimit import RateLimiter
from shared.uow import Transaction, UnitOfWork

router = APIRouter(prefix="/v1", tags=["leads"])
log = logging.getLogger(__name__)

REDIRECT_FIELD = "redirect_to"
NameText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class LeadAccepted(BaseModel):
    """The answer to a lead submission."""

    lead_id: str
    status: Literal["captured", "merged"]


async def submitter(request: Request, key: Annotated[str | None, Query(include_in_schema=False)] = None) -> Principal:
    """The caller: a Bearer key, or for plain HTML forms (which cannot set headers) a public form key in `?key=`."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        principal = await resolve_key(request, header[7:].strip())
    elif key:
        principal = await resolve_key(request, key)
        if principal.kind != "form":
            raise ProblemError(
                401,
                "only public form keys may travel in the URL; send others as a Bearer header",
                headers={"WWW-Authenticate": "Bearer"},
            )
    else:
        raise ProblemError(401, "missing Authorization: Bearer <key> header", headers={"WWW-Authenticate": "Bearer"})
    if not principal.allows(SUBMIT_LEADS):
        raise ProblemError(403, f"this key lacks the {SUBMIT_LEADS!r} scope")
    return principal


SubmitterDep = Annotated[Principal, Depends(submitter)]


async def _unit_of_work(request: Request) -> UnitOfWork:
    """The service's unit of work. Async on purpose: FastAPI runs a plain `def` dependency (as shared.app's UowDep
    is) in the thread pool, a thread hand-off on every lead submission."""
    uow: UnitOfWork = request.app.state.runtime.uow
    return uow


UowDep = Annotated[UnitOfWork, Depends(_unit_of_work)]


FORM_ID_MAX_LENGTH = 100
_FORM_ID_PARAMETER = {
    "name": "form_id", "in": "query", "required": False,
    "schema": {"anyOf": [{"type": "string", "maxLength": FORM_ID_MAX_LENGTH}, {"type": "null"}], "title": "Form Id"},
}  # fmt: skip


@router.post(
    "/leads",
    status_code=202,
    response_model=LeadAccepted,
    responses={303: {"description": "plain HTML form post with an allowed redirect_to"},
               422: {"description": "Validation Error"}},
    openapi_extra={"parameters": [_FORM_ID_PARAMETER], "requestBody": {"required": True, "content": {
        "application/json": {"schema": LeadSubmission.model_json_schema()},
        FORM_CONTENT_TYPE: {"schema": LeadSubmission.model_json_schema()},
    }}},
)  # fmt: skip
async def post_lead(request: Request) -> Response:
    """Capture a lead from JSON or a plain HTML form post; 202 once stored (303 to `redirect_to` for forms)."""
    # The busiest route takes its caller, form_id and unit of work by hand rather than as FastAPI dependencies and
    # parameters (documented above as they were): solving those took a tenth of intake's CPU. The order holds: the
    # caller is checked before the parameters.
    principal = await submitter(request, request.query_params.get("key"))
    form_id = _form_id_parameter(request)
    uow: UnitOfWork = request.app.state.runtime.uow
    body = await read_body(request)
    fields = parse_fields(request.headers.get("content-type", ""), body)
    if form_id and not fields.get("form_id"):
        fields["form_id"] = form_id
    form = await _form_for(request, principal, fields.get("form_id"))
    _enforce_rate_limits(request, principal)
    redirect_to, trapped = _take_controls(fields, form)
    if redirect_to is not None and not redirect_allowed(redirect_to, form):
        _invalid(REDIRECT_FIELD, "not an allowed redirect for this form")
    if trapped:
        log.info("honeypot filled: dropping a bot submission", extra={"form_id": fields.get("form_id")})
        request.app.state.honeypot_drops += 1
        return _answer(LeadAccepted(lead_id=new_lead_id(), status="captured"), redirect_to)
    submission = _validate(fields, form)
    return await _capture(request, uow, principal, body, submission, redirect_to)


def _form_id_parameter(request: Request) -> str | None:
    form_id = request.query_params.get("form_id")
    if form_id is not None and len(form_id) > FORM_ID_MAX_LENGTH:
        raise RequestValidationError([{
            "type": "string_too_long", "loc": ("query", "form_id"), "input": form_id,
            "msg": f"String should have at most {FORM_ID_MAX_LENGTH} characters",
            "ctx": {"max_length": FORM_ID_MAX_LENGTH},
        }])  # fmt: skip
    return form_id


async def _form_for(request: Request, principal: Principal, form_id: Any) -> FormPolicy | None:
    registry: FormRegistry = request.app.state.forms
    form = await registry.get(str(form_id)) if form_id else None
    if principal.kind == "form" and form is None:
        _invalid("form_id", "a public form key needs a registered form_id")
    if principal.allowed_forms and form_id not in principal.allowed_forms:
        raise ProblemError(403, f"this key may not submit form {form_id!r}")
    if not origin_allowed(request.headers.get("origin"), form, principal.allowed_origins):
        raise ProblemError(403, f"origin {request.headers.get('origin')!r} may not post this form")
    return form


def _enforce_rate_limits(request: Request, principal: Principal) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    settings = request.app.state.runtime.settings
    checks = []
    if principal.kind == "form":
        client = request.client.host if request.client else "unknown"
        checks = [
            ("ip", client, settings.rate_limit_per_ip_per_minute),
            ("key", principal.name, settings.rate_limit_per_form_key_per_minute),
        ]
    elif principal.kind == "server":
        checks = [("key", principal.name, settings.rate_limit_per_server_key_per_minute)]
    for scope, key, per_minute in checks:
        refusal = limiter.take(scope, key, per_minute=per_minute)
        if refusal is not None:
            retry = str(refusal.retry_after_seconds)
            raise ProblemError(
                429,
                f"too many requests for this {'client' if scope == 'ip' else 'key'}; retry later",
                headers={
                    "Retry-After": retry,
                    "RateLimit-Limit": str(refusal.limit),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": retry,
                },
            )


def _take_controls(fields: dict[str, Any], form: FormPolicy | None) -> tuple[str | None, bool]:
    """Pop the fields that steer the submission (redirect, honeypot) so they are never stored as lead data."""
    honeypot = form.honeypot_field if form else DEFAULT_HONEYPOT_FIELD
    given = fields.get("attributes")
    attributes: dict[str, Any] = given if isinstance(given, dict) else {}
    redirect_to = fields.pop(REDIRECT_FIELD, None) or attributes.pop(REDIRECT_FIELD, None)
    trap = fields.pop(honeypot, None) or attributes.pop(honeypot, None)
    if attributes == {} and "attributes" in fields:
        del fields["attributes"]
    return (str(redirect_to) if redirect_to else None), bool(trap and str(trap).strip())


def _validate(fields: dict[str, Any], form: FormPolicy | None) -> LeadSubmission:
    consent_missing = (
        form is not None
        and form.requires_consent
        and str(fields.get("consent_marketing", "")).lower() not in ("true", "on", "yes", "1")
    )
    missing = (
        [{"type": "missing", "loc": ("body", "consent_marketing"), "msg": "this form requires marketing consent"}]
        if consent_missing
        else []
    )
    try:
        submission = validate_submission(fields)
    except RequestValidationError as exc:
        raise RequestValidationError([*exc.errors(), *missing]) from exc
    if missing:
        raise RequestValidationError(missing)
    return submission


def _invalid(field: str, message: str) -> None:
    raise RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": message}])


async def _capture(
    request: Request,
    uow: UowDep,
    principal: Principal,
    body: bytes,
    submission: LeadSubmission,
    redirect_to: str | None,
) -> Response:
    raw_key = request.headers.get(idempotency.HEADER)
    if raw_key is None:
        lead_id, status = await _capture_with_others(request, submission.to_lead(new_lead_id()))
        return _answer(_accepted(lead_id, status), redirect_to)
    key = idempotency.parse_key(raw_key)
    same_request = idempotency.fingerprint("POST", request.url.path, request.headers.get("content-type", ""), body)
    stored = await idempotency.claim(uow, principal=principal.name, key=key, request_fingerprint=same_request)
    if stored is not None:
        return _replay(stored)

    async def remember(tx: Transaction, lead_id: str, status: str) -> None:
        answer = {"lead_id": lead_id, "status": "captured" if status == "captured" else "merged"}
        if redirect_to:
            answer["location"] = redirect_to
        response = idempotency.StoredResponse(303 if redirect_to else 202, orjson.dumps(answer))
        await idempotency.record(tx, principal=principal.name, key=key, response=response)

    try:
        lead_id, status = await capture_lead(uow, submission.to_lead(new_lead_id()), before_commit=remember)
    except Exception:
        await _release_quietly(uow, principal.name, key)
        raise
    return _answer(_accepted(lead_id, status), redirect_to)


async def _capture_with_others(request: Request, lead: Lead) -> tuple[str, CaptureStatus]:
    """Share a transaction with the submissions arriving meanwhile; the 202 still waits for this lead's commit."""
    batcher: LeadCaptureBatcher = request.app.state.lead_batcher
    try:
        return await batcher.capture(lead)
    except CaptureStopped:
        raise ProblemError(
            503, "lead intake is stopping; nothing was stored, retry later", headers={"Retry-After": "5"}
        ) from None


async def _release_quietly(uow: UowDep, principal: str, key: str) -> None:
    try:
        await idempotency.release(uow, principal=principal, key=key)
    except Exception as exc:  # the claim then expires as abandoned
        log.warning("could not release idempotency key: %r", exc)


def _accepted(lead_id: str, status: str) -> LeadAccepted:
    return LeadAccepted(lead_id=lead_id, status="captured" if status == "captured" else "merged")


def _answer(accepted: LeadAccepted, redirect_to: str | None) -> Response:
    if redirect_to:
        return RedirectResponse(redirect_to, status_code=303)
    return JSONResponse(accepted.model_dump(), status_code=202)


def _replay(stored: idempotency.StoredResponse) -> Response:
    answer = orjson.loads(stored.body)
    headers = {"Idempotent-Replayed": "true"}
    if stored.status == 303:
        return RedirectResponse(answer["location"], status_code=303, headers=headers)
    return JSONResponse(answer, status_code=stored.status, headers=headers)


class LeadView(BaseModel):
    """A lead as stored, with the history of its changes."""

    model_config = ConfigDict(extra="allow")

    lead_id: str
    email: str
    history: list[dict[str, Any]]


@router.get("/leads/{lead_id}", response_model=LeadView)
async def get_lead(lead_id: str, uow: UowDep, _: Annotated[Principal, Depends(require(READ_LEADS))]) -> LeadView:
    """The lead as it now stands and every change made to it by resubmissions."""
    async with uow.read() as session:
        lead = await store.load_lead(session, lead_id=lead_id)
        history = await store.load_history(session, lead_id=lead_id)
    if lead is None:
        raise ProblemError(404, f"no lead {lead_id}")
    return LeadView.model_validate({**lead.__dict__, "history": history})


@router.delete("/leads/{lead_id}", status_code=202)
async def delete_lead(
    lead_id: str, uow: UowDep, principal: Annotated[Principal, Depends(require(ERASE_LEADS))]
) -> dict[str, str]:
    """Erase the lead's personal data (admin or privacy key): removed here at once, and by every other service
    when it reads `leads.erased`; anonymous facts (country, segment, source, score, outcomes) stay for reports."""
    if not await erase_lead(uow, lead_id=lead_id, requested_by=principal.name):
        raise ProblemError(404, f"no lead {lead_id}")
    return {"lead_id": lead_id, "status": "erased"}


ActivityKind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,99}$")]


class ActivityIn(BaseModel):
    """Something a lead did; name the lead by id or by email (an unknown email is held until the lead arrives)."""

    model_config = ConfigDict(extra="forbid")

    lead_id: Annotated[str, StringConstraints(min_length=1, max_length=36)] | None = None
    email: EmailAddress | None = None
    type: ActivityKind = Field(
        description="page_view, content_download, webinar_attended, email_click, "
        "pricing_page_view, demo_request, or a custom type"
    )
    occurred_at: AwareDatetime | None = None
    url: Annotated[str, StringConstraints(max_length=2000)] | None = None
    title: NameText | None = None
    properties: dict[
        Annotated[str, StringConstraints(max_length=100)], Annotated[str, StringConstraints(max_length=1000)]
    ] = Field(default_factory=dict, max_length=50)

    @model_validator(mode="after")
    def _names_a_lead(self) -> ActivityIn:
        if (self.lead_id is None) == (self.email is None):
            raise ValueError("give exactly one of lead_id or email")
        return self


class ActivityAccepted(BaseModel):
    """The answer to an activity."""

    activity_id: str
    status: Literal["recorded", "held"]


@router.post("/activities", status_code=202, response_model=ActivityAccepted, tags=["activities"])
async def post_activity(
    body: ActivityIn, uow: UowDep, _: Annotated[Principal, Depends(require(SUBMIT_ACTIVITIES))]
) -> ActivityAccepted:
    """Record what a lead did; it reaches scoring as `leads.activity`."""
    activity = Activity(
        kind=body.type,
        occurred_at=body.occurred_at or utc_now(),
        url=body.url,
        title=body.title,
        properties=body.properties,
    )
    try:
        activity_id, status = await record_activity(
            uow, activity, lead_id=body.lead_id, email=body.email.lower() if body.email else None
        )
    except UnknownLead:
        raise ProblemError(404, f"no lead {body.lead_id}") from None
    return ActivityAccepted(activity_id=activity_id, status=status)
