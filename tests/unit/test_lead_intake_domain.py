"""Lead intake: what a submission must hold, and how it is normalised into a lead."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.lead_intake.domain import company_domain_of
from services.lead_intake.submission import LeadSubmission
from shared.problems import field_errors


@pytest.mark.parametrize("email", ["ada@gmail.com", "ada@GMail.com", "ada@proton.me", "ada@yahoo.co.jp"])
def test_free_mail_address_names_no_company(email: str) -> None:
    assert company_domain_of(email) is None


def test_business_address_names_its_company_domain_in_lowercase() -> None:
    assert company_domain_of("Ada.Lovelace@Acme.Example") == "acme.example"


def test_subdomain_is_kept_as_the_company_domain() -> None:
    assert company_domain_of("ada@eu.acme.example") == "eu.acme.example"


def test_address_without_a_domain_names_no_company() -> None:
    assert company_domain_of("ada@") is None


def _submission(**fields: Any) -> LeadSubmission:
    return LeadSubmission.model_validate({"email": "Ada@Acme.Example", **fields})


def test_lead_has_lowercased_email_and_uppercased_country() -> None:
    lead = _submission(country="gb", company="  Acme  ").to_lead("lead-1")
    assert (lead.lead_id, lead.email, lead.country, lead.company) == ("lead-1", "ada@acme.example", "GB", "Acme")
    assert lead.captured_at.tzinfo is not None


def test_lead_keeps_attributes_and_campaign() -> None:
    lead = _submission(utm_campaign="spring", attributes={"plan": "pro"}).to_lead("lead-1")
    assert (lead.utm_campaign, lead.attributes) == ("spring", {"plan": "pro"})


def test_lead_without_country_has_none() -> None:
    assert _submission().to_lead("lead-1").country is None


def test_bad_email_and_bad_country_are_both_reported() -> None:
    with pytest.raises(ValidationError) as caught:
        LeadSubmission.model_validate({"email": "not-an-email", "country": "Narnia"})
    assert [error["field"] for error in field_errors(caught.value.errors())] == ["email", "country"]


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({}, "email"),
        ({"email": "ada@acme.example", "company": "x" * 201}, "company"),
        ({"email": "ada@acme.example", "score": 100}, "score"),
        ({"email": "ada@acme.example", "attributes": {"k": "v" * 1001}}, "attributes.k"),
    ],
)
def test_invalid_submission_names_the_bad_field(fields: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LeadSubmission.model_validate(fields)
    assert [error["field"] for error in field_errors(caught.value.errors())] == [bad]


def test_blank_form_inputs_are_treated_as_not_given() -> None:
    submission = LeadSubmission.model_validate({"email": "ada@acme.example", "company": "  ", "phone": ""})

    assert (submission.company, submission.phone) == (None, None)
