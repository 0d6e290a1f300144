"""CloudEvents 1.0 envelope in Kafka's binary content mode.

Attributes travel as `ce_*` headers, the JSON payload is the record value and the lead id is the record key,
so any CloudEvents SDK or `kcat` can read what Baton writes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

SPEC_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"


class InvalidEvent(ValueError):
    """A Kafka record that is not a well-formed Baton CloudEvent."""


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One event: CloudEvents context attributes plus a JSON object as data."""

    type: str
    source: str
    subject: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=utc_now)

    def to_kafka(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """Key, value and headers of the Kafka record in binary content mode."""
        headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", self.time.isoformat().encode()),
            ("ce_subject", self.subject.encode()),
            ("content-type", JSON_CONTENT_TYPE.encode()),
        ]
        return self.subject.encode(), orjson.dumps(self.data), headers

    def to_structured(self) -> dict[str, Any]:
        """The event in CloudEvents' structured JSON form (`application/cloudevents+json`), for HTTP delivery."""
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.isoformat(),
            "datacontenttype": JSON_CONTENT_TYPE,
            "data": self.data,
        }

    @classmethod
    def from_plain_json(cls, value: bytes | None, *, type: str, source: str, event_id: str, subject: str) -> CloudEvent:
        """An event made from a record an outside tool wrote as a plain JSON object; raises InvalidEvent."""
        data = _decode_data(value)
        return cls(type=type, source=source, subject=str(data.get("lead_id") or subject), data=data, id=event_id)

    @classmethod
    def from_kafka(
        cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | tuple[Any, ...]
    ) -> CloudEvent:
        """Parse a Kafka record; raises InvalidEvent naming what is wrong."""
        attrs = _decode_headers(headers)
        missing = [name for name in ("ce_id", "ce_source", "ce_type", "ce_specversion") if not attrs.get(name)]
        if missing:
            raise InvalidEvent(f"missing CloudEvents header(s): {', '.join(missing)}")
        if attrs["ce_specversion"] != SPEC_VERSION:
            raise InvalidEvent(f"unsupported ce_specversion {attrs['ce_specversion']!r}")
        content_type = attrs.get("content-type", JSON_CONTENT_TYPE)
        if not content_type.startswith(JSON_CONTENT_TYPE):
            raise InvalidEvent(f"unsupported content-type {content_type!r}")
        data = _decode_data(value)
        subject = attrs.get("ce_subject") or (key.decode("utf-8", "replace") if key else "")
        return cls(
            id=attrs["ce_id"],
            source=attrs["ce_source"],
            type=attrs["ce_type"],
            subject=subject,
            time=_decode_time(attrs.get("ce_time")),
            data=data,
        )


def _decode_headers(headers: list[tuple[str, bytes]] | tuple[Any, ...]) -> dict[str, str]:
    try:
        return {name: raw.decode("utf-8") for name, raw in headers if raw is not None}
    except (UnicodeDecodeError, AttributeError, ValueError) as exc:
        raise InvalidEvent(f"undecodable header: {exc}") from exc


def _decode_data(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise InvalidEvent("record has no value")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEvent("value is not a JSON object")
    return data


def _decode_time(raw: str | None) -> datetime:
    if not raw:
        return utc_now()
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidEvent(f"ce_time is not RFC 3339: {raw!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
