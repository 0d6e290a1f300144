"""Admin routes of lead_intake: registering forms (origins, redirects, consent, honeypot)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.lead_intake.forms import DEFAULT_HONEYPOT_FIELD, FormPolicy, FormRegistry, delete_form, save_form
from shared.app import UowDep
from shared.auth import AdminDep
from shared.problems import ProblemError

router = APIRouter(prefix="/v1/forms", tags=["forms"])

FormId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
Origin = Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")]
PageUrl = Annotated[str, StringConstraints(pattern=r"^https?://\S{1,2000}$")]


class FormIn(BaseModel):
    """How a form may be used: from which pages, redirecting where, requiring what."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    allowed_origins: list[Origin] = Field(default_factory=list, max_length=50)
    redirect_urls: list[PageUrl] = Field(default_factory=list, max_length=50)
    requires_consent: bool = False
    honeypot_field: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,100}$")] = DEFAULT_HONEYPOT_FIELD


class FormOut(FormIn):
    """A registered form."""

    form_id: str


def _out(policy: FormPolicy) -> FormOut:
    return FormOut.model_validate(
        {
            **policy.__dict__,
            "allowed_origins": sorted(policy.allowed_origins),
            "redirect_urls": sorted(policy.redirect_urls),
        }
    )


@router.put("/{form_id}", response_model=FormOut)
async def put_form(form_id: FormId, body: FormIn, request: Request, uow: UowDep, _: AdminDep) -> FormOut:
    """Register or replace a form."""
    policy = FormPolicy(
        form_id=form_id,
        name=body.name,
        allowed_origins=frozenset(body.allowed_origins),
        redirect_urls=frozenset(body.redirect_urls),
        requires_consent=body.requires_consent,
        honeypot_field=body.honeypot_field,
    )
    await save_form(uow, policy)
    registry: FormRegistry = request.app.state.forms
    registry.forget()
    return _out(policy)


@router.get("", response_model=list[FormOut])
async def get_forms(request: Request, _: AdminDep) -> list[FormOut]:
    """Every registered form."""
    registry: FormRegistry = request.app.state.forms
    registry.forget()
    return [_out(policy) for policy in (await registry.all()).values()]


@router.delete("/{form_id}", status_code=204)
async def remove_form(form_id: FormId, request: Request, uow: UowDep, _: AdminDep) -> Response:
    """Unregister a form."""
    if not await delete_form(uow, form_id):
        raise ProblemError(404, f"no form {form_id}")
    registry: FormRegistry = request.app.state.forms
    registry.forget()
    return Response(status_code=204)
