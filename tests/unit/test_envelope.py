"""CloudEvents binary mode: what Baton writes to Kafka, it (and any CloudEvents reader) can read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.envelope import CloudEvent, InvalidEvent
from tests.unit.fakes import header

EVENT = CloudEvent(
    type="dev.baton.test.v1",
    source="/baton/test",
    subject="lead-1",
    data={"n": 1, "nested": {"ok": True}},
    id="event-1",
    time=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
)


def _headers(**overrides: str | None) -> list[tuple[str, bytes]]:
    _, _, headers = EVENT.to_kafka()
    values = {name: raw.decode() for name, raw in headers} | overrides
    return [(name, value.encode()) for name, value in values.items() if value is not None]


def test_event_survives_a_round_trip_through_a_kafka_record() -> None:
    key, value, headers = EVENT.to_kafka()
    assert CloudEvent.from_kafka(key, value, headers) == EVENT


def test_record_carries_the_attributes_as_ce_headers_and_is_keyed_by_subject() -> None:
    key, _, headers = EVENT.to_kafka()
    assert key == b"lead-1"
    assert {name: raw.decode() for name, raw in headers} == {
        "ce_specversion": "1.0",
        "ce_id": "event-1",
        "ce_source": "/baton/test",
        "ce_type": "dev.baton.test.v1",
        "ce_time": "2024-05-01T12:30:00+00:00",
        "ce_subject": "lead-1",
        "content-type": "application/json",
    }


@pytest.mark.parametrize("name", ["ce_id", "ce_source", "ce_type", "ce_specversion"])
def test_record_without_a_required_header_is_invalid(name: str) -> None:
    with pytest.raises(InvalidEvent, match=name):
        CloudEvent.from_kafka(b"lead-1", b"{}", _headers(**{name: None}))


def test_record_with_an_empty_required_header_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="ce_id"):
        CloudEvent.from_kafka(b"lead-1", b"{}", _headers(ce_id=""))


def test_other_specversion_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="specversion"):
        CloudEvent.from_kafka(b"lead-1", b"{}", _headers(ce_specversion="0.3"))


def test_non_json_content_type_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="content-type"):
        CloudEvent.from_kafka(b"lead-1", b"{}", _headers(**{"content-type": "text/plain"}))


def test_json_content_type_with_parameters_is_accepted() -> None:
    event = CloudEvent.from_kafka(b"lead-1", b"{}", _headers(**{"content-type": "application/json; charset=utf-8"}))
    assert event.data == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"not json", "not JSON"), (b"[1, 2]", "not a JSON object"), (b'"text"', "not a JSON object"), (None, "no value")],
)
def test_value_that_is_not_a_json_object_is_invalid(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        CloudEvent.from_kafka(b"lead-1", value, _headers())


def test_unparseable_ce_time_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="ce_time"):
        CloudEvent.from_kafka(b"lead-1", b"{}", _headers(ce_time="yesterday"))


def test_undecodable_header_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="undecodable"):
        CloudEvent.from_kafka(b"lead-1", b"{}", [*_headers(), ("ce_extra", b"\xff\xfe")])


def test_zulu_and_offset_times_keep_their_instant() -> None:
    zulu = CloudEvent.from_kafka(b"k", b"{}", _headers(ce_time="2024-05-01T12:30:00Z"))
    offset = CloudEvent.from_kafka(b"k", b"{}", _headers(ce_time="2024-05-01T14:30:00+02:00"))
    assert zulu.time == offset.time == EVENT.time
    assert offset.time.utcoffset() == timedelta(hours=2)


def test_naive_ce_time_is_read_as_utc() -> None:
    event = CloudEvent.from_kafka(b"k", b"{}", _headers(ce_time="2024-05-01T12:30:00"))
    assert event.time == EVENT.time
    assert event.time.tzinfo is not None


def test_missing_ce_time_defaults_to_now() -> None:
    before = datetime.now(UTC)
    event = CloudEvent.from_kafka(b"k", b"{}", _headers(ce_time=None))
    assert before <= event.time <= datetime.now(UTC)


def test_subject_falls_back_to_the_record_key() -> None:
    event = CloudEvent.from_kafka(b"lead-from-key", b"{}", _headers(ce_subject=None))
    assert event.subject == "lead-from-key"


def test_headers_without_a_value_are_ignored() -> None:
    event = CloudEvent.from_kafka(b"lead-1", b"{}", [*_headers(), ("traceparent", None)])  # type: ignore[list-item]
    assert event.id == "event-1"


def test_new_events_get_distinct_ids_and_an_aware_time() -> None:
    first = CloudEvent(type="t", source="s", subject="x", data={})
    second = CloudEvent(type="t", source="s", subject="x", data={})
    assert first.id != second.id
    assert first.time.tzinfo is not None
    assert header(first.to_kafka()[2], "ce_time").endswith("+00:00")
