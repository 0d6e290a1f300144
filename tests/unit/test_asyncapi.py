"""docs/asyncapi.yaml describes what the code actually sends: every topic, payload, header and routing kind."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml  # type: ignore[import-untyped]

from services.routing.webhook_signing import signed_headers
from shared.envelope import CloudEvent
from shared.events import PAYLOAD_TYPES, EventPayload, LeadRoutedV1, RoutingKind
from shared.topics import ALL_TOPICS, dead_letter_topic

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "asyncapi.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    return loaded


def refs(node: Any) -> Iterator[str]:
    """Every $ref in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def properties(doc: dict[str, Any], schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Property names and required names of an object schema, following $ref and allOf."""
    if "$ref" in schema:
        return properties(doc, resolve(doc, schema["$ref"]))
    names, required = set(schema.get("properties", {})), set(schema.get("required", []))
    for part in schema.get("allOf", []):
        more, more_required = properties(doc, part)
        names, required = names | more, required | more_required
    return names, required


def test_is_an_asyncapi_3_document_whose_references_all_resolve(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert {"info", "servers", "channels", "operations", "components"} <= set(doc)
    for ref in refs(doc):
        resolve(doc, ref)


def test_every_operation_sends_or_receives_messages_of_its_own_channel(doc: dict[str, Any]) -> None:
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


def test_every_topic_and_its_dead_letter_topic_is_a_channel(doc: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert set(ALL_TOPICS) <= addresses
    assert {dead_letter_topic(topic) for topic in ALL_TOPICS} <= addresses
    assert "/v1/stream" in addresses


def test_every_event_type_is_a_message_whose_payload_has_the_models_fields(doc: dict[str, Any]) -> None:
    messages = {message["name"]: message for message in doc["components"]["messages"].values()}
    for event_type, model in PAYLOAD_TYPES.items():
        assert event_type in messages, event_type
        names, required = properties(doc, messages[event_type]["payload"])
        assert names == set(model.model_fields), event_type
        assert required == _required(model), event_type


def _required(model: type[EventPayload]) -> set[str]:
    return {name for name, field in model.model_fields.items() if field.is_required()}


def test_headers_are_the_ones_the_code_writes(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    _, _, kafka_headers = CloudEvent(type="t", source="s", subject="lead-1", data={}).to_kafka()
    assert set(schemas["CloudEventHeaders"]["properties"]) == {name for name, _ in kafka_headers}
    assert set(schemas["CloudEventHeaders"]["properties"]["ce_type"]["enum"]) == set(PAYLOAD_TYPES)
    consumer_source = (ROOT / "shared" / "consumer.py").read_text(encoding="utf-8")
    dead_letter_headers = set(re.findall(r'"(baton_\w+)"', consumer_source))
    assert dead_letter_headers
    assert dead_letter_headers <= set(schemas["DeadLetterHeaders"]["properties"])
    webhook_headers = set(signed_headers("whsec_" + "A" * 44, "msg_1", 0, b"{}"))
    assert webhook_headers <= set(schemas["StandardWebhookHeaders"]["properties"])


def test_every_routing_kind_is_listed_and_explained(doc: dict[str, Any]) -> None:
    kinds = set(get_args(RoutingKind))
    assert kinds == set(get_args(LeadRoutedV1.model_fields["kind"].annotation))
    assert set(doc["components"]["schemas"]["RoutingKind"]["enum"]) == kinds
    routed = next(channel for channel in doc["channels"].values() if channel["address"] == "leads.routed")
    for kind in kinds:
        assert f"| `{kind}` |" in routed["description"], kind
