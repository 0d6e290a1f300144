"""Lead intake: what a submission must hold, and how it is normalised into a lead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.lead_intake.domain import (
    Lead,
    company_domain_of,
    merge_lead,
    normalise_company_size,
    normalise_country,
    normalise_phone,
    normalise_seniority,
)
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


@pytest.mark.parametrize(("raw", "iso"), [("jp", "JP"), ("JPN", "JP"), ("Japan", "JP"), (" germany ", "DE")])
def test_country_is_normalised_to_iso_3166(raw: str, iso: str) -> None:
    assert normalise_country(raw) == iso


@pytest.mark.parametrize(
    ("raw", "country", "e164"),
    [
        ("03-1234-5678", "JP", "+81312345678"),
        ("+49 30 901820", None, "+4930901820"),
        ("(415) 555-2671", "US", "+14155552671"),
    ],
)
def test_phone_is_normalised_to_e164_in_the_lead_country(raw: str, country: str | None, e164: str) -> None:
    assert normalise_phone(raw, country) == e164


@pytest.mark.parametrize("raw", ["12", "not a phone", "03-1234-5678"])
def test_unusable_phone_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        normalise_phone(raw, None)


@pytest.mark.parametrize(
    ("raw", "level"),
    [("VP", "vp"), ("Vice President", "vp"), ("C-Level", "c_level"), ("founder", "owner"), ("Director", "director")],
)
def test_seniority_is_one_of_the_levels(raw: str, level: str) -> None:
    assert normalise_seniority(raw) == level


@pytest.mark.parametrize(("raw", "band"), [("11-50", "11-50"), ("7", "1-10"), ("250", "201-1000"), ("99999", "5001+")])
def test_company_size_is_a_band(raw: str, band: str) -> None:
    assert normalise_company_size(raw) == band


def test_merge_lets_new_non_empty_values_win_and_keeps_identity() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    stored = Lead(
        lead_id="l1",
        email="a@b.example",
        captured_at=at,
        company="Old",
        city="Kyoto",
        interests=("ai",),
        attributes={"a": "1"},
    )
    submitted = Lead(
        lead_id="l2",
        email="a@b.example",
        captured_at=at.replace(year=2027),
        company="New",
        interests=("crm", "ai"),
        attributes={"b": "2"},
    )

    merged, changes = merge_lead(stored, submitted)

    assert (merged.lead_id, merged.captured_at, merged.company, merged.city) == ("l1", at, "New", "Kyoto")
    assert merged.interests == ("ai", "crm") and merged.attributes == {"a": "1", "b": "2"}
    assert set(changes) == {"company", "interests", "attributes"}
    assert changes["company"] == ["Old", "New"]


def test_merge_of_nothing_new_changes_nothing() -> None:
    lead = Lead(lead_id="l1", email="a@b.example", captured_at=datetime(2026, 1, 1, tzinfo=UTC), company="Acme")
    assert merge_lead(lead, lead)[1] == {}
