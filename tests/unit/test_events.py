"""Event payloads: frozen, versioned, and unchanged by a trip through a Kafka record."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared import topics
from shared.envelope import CloudEvent, InvalidEvent
from shared.events import (
    PAYLOAD_TYPES,
    EventPayload,
    LeadCapturedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
    ScoreContribution,
    parse_payload,
)

AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

PAYLOADS: list[EventPayload] = [
    LeadCapturedV1(
        lead_id="lead-1",
        email="ada@acme.test",
        company="Acme",
        company_domain="acme.test",
        country="GB",
        attributes={"plan": "pro"},
        captured_at=AT,
    ),
    LeadScoredV1(
        lead_id="lead-1",
        score=45,
        verdict="nurture",
        model_version="rules-v1",
        contributions=(ScoreContribution(rule="business_email", points=30, reason="business email at acme.test"),),
        company_domain="acme.test",
        scored_at=AT,
    ),
    LeadRoutedV1(
        lead_id="lead-1",
        assignment_id="a-1",
        kind="assigned",
        rep_id="rep-a",
        rep_name="Aiko",
        reason="round robin",
        score=45,
        routed_at=AT,
    ),
    OutcomeRecordedV1(
        lead_id="lead-1",
        outcome_id="o-1",
        kind="won",
        amount=Decimal("1200.50"),
        currency="EUR",
        occurred_at=AT,
    ),
]


def _through_kafka(event: CloudEvent) -> CloudEvent:
    return CloudEvent.from_kafka(*event.to_kafka())


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_payload_round_trips_through_a_kafka_record(payload: EventPayload) -> None:
    event = payload.to_event(source="/baton/test")
    assert event.type == payload.EVENT_TYPE
    assert event.subject == payload.lead_id
    assert parse_payload(_through_kafka(event), type(payload)) == payload


def test_explicit_event_id_is_kept() -> None:
    assert PAYLOADS[0].to_event(source="/baton/test", event_id="fixed").id == "fixed"


def test_every_topic_has_an_event_type() -> None:
    assert {model.TOPIC for model in PAYLOAD_TYPES.values()} == {
        topics.LEADS_CAPTURED,
        topics.LEADS_ACTIVITY,
        topics.LEADS_SCORED,
        topics.LEADS_ROUTED,
        topics.LEADS_OUTCOMES,
        topics.LEADS_ERASED,
    }


def test_event_of_another_type_is_rejected() -> None:
    event = PAYLOADS[0].to_event(source="/baton/test")
    with pytest.raises(InvalidEvent, match=re.escape(f"expected {LeadScoredV1.EVENT_TYPE}")):
        parse_payload(event, LeadScoredV1)


def test_event_with_invalid_data_is_rejected() -> None:
    event = CloudEvent(type=LeadScoredV1.EVENT_TYPE, source="s", subject="lead-1", data={"score": "high"})
    with pytest.raises(InvalidEvent, match=re.escape(f"invalid {LeadScoredV1.EVENT_TYPE} payload")):
        parse_payload(event, LeadScoredV1)


def test_unknown_fields_from_a_newer_producer_are_ignored() -> None:
    data = {**PAYLOADS[2].model_dump(mode="json"), "territory": "EMEA"}
    event = CloudEvent(type=LeadRoutedV1.EVENT_TYPE, source="s", subject="lead-1", data=data)
    assert parse_payload(event, LeadRoutedV1) == PAYLOADS[2]


def test_lead_id_defaults_to_the_event_subject() -> None:
    data = PAYLOADS[2].model_dump(mode="json", exclude={"lead_id"})
    event = CloudEvent(type=LeadRoutedV1.EVENT_TYPE, source="s", subject="lead-9", data=data)
    assert parse_payload(event, LeadRoutedV1).lead_id == "lead-9"


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_payloads_are_frozen(payload: EventPayload) -> None:
    with pytest.raises(ValidationError, match="frozen"):
        payload.lead_id = "other"  # type: ignore[misc]  # mypy already forbids it; pydantic must too


def test_contributions_are_frozen() -> None:
    contribution = ScoreContribution(rule="r", points=1, reason="why")
    with pytest.raises(ValidationError, match="frozen"):
        contribution.points = 2  # type: ignore[misc]
