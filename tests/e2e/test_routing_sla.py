"""Routing end to end: an SLA timer survives a routing crash, and a rep's acceptance stops it."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from shared.topics import LEADS_ROUTED
from tests.support.infra import KafkaBroker
from tests.support.kafka_reader import read_topic
from tests.support.polling import eventually
from tests.support.stack import Stack

FAST = {"rules": [{"id": "everyone"}], "sla_minutes": {"default": 0.1, "A": 0.1, "B": 0.1, "C": 0.1, "D": 0.1}}
RELAXED = {"rules": [{"id": "everyone"}], "sla_minutes": {"default": 1440}}


@pytest.fixture
async def routing(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """Routing's API with a 6-second SLA policy active; a relaxed one is activated afterwards."""
    async with httpx.AsyncClient(base_url=stack["routing"].url, headers=stack.headers, timeout=10) as client:
        await _activate(client, FAST)
        try:
            yield client
        finally:
            await _activate(client, RELAXED)


async def _activate(client: httpx.AsyncClient, definition: dict[str, Any]) -> None:
    created = await client.post("/v1/routing/policies", json={"name": "e2e", "definition": definition})
    assert created.status_code == 201, created.text
    activated = await client.post(f"/v1/routing/policies/{created.json()['version']}/activate")
    assert activated.status_code == 200, activated.text


async def _post_lead(stack: Stack) -> str:
    async with httpx.AsyncClient(base_url=stack["lead_intake"].url, headers=stack.headers, timeout=10) as client:
        answer = await client.post("/v1/leads", json={"email": f"sla.{uuid.uuid4().hex[:8]}@globex.example"})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["lead_id"])


async def _assignment(client: httpx.AsyncClient, lead_id: str) -> dict[str, Any] | None:
    answer = await client.get(f"/v1/assignments/{lead_id}")
    return answer.json() if answer.status_code == 200 else None


async def test_an_sla_missed_while_routing_was_down_fires_once_after_restart(
    stack: Stack, routing: httpx.AsyncClient, kafka: KafkaBroker
) -> None:
    lead_id = await _post_lead(stack)
    first = await eventually(lambda: _assignment(routing, lead_id), message="lead assigned")
    assert first["status"] == "assigned" and first["sla_deadline"] is not None
    deadline = datetime.fromisoformat(first["sla_deadline"])

    stack["routing"].signal(signal.SIGKILL)

    async def past_deadline() -> bool:
        return datetime.now(UTC) > deadline

    await eventually(past_deadline, timeout=30, message="SLA deadline passed while routing was down")
    stack["routing"].start()
    stack["routing"].wait_ready()

    async def reassigned() -> dict[str, Any] | None:
        state = await _assignment(routing, lead_id)
        return state if state and state["rep_id"] not in (None, first["rep_id"]) else None

    after = await eventually(reassigned, timeout=60, message="lead reassigned after the SLA miss")
    await routing.post(f"/v1/assignments/{lead_id}/accept", json={"rep_id": after["rep_id"]})
    kinds = [step["kind"] for step in (await _assignment(routing, lead_id) or {})["history"]]
    assert kinds[:3] == ["assigned", "sla_breached", "reassigned"]
    assert "accepted" in kinds

    records = await read_topic(
        kafka.bootstrap_servers,
        LEADS_ROUTED,
        until=lambda seen: any(r.key == lead_id.encode() and orjson.loads(r.value)["kind"] == "accepted" for r in seen),
    )
    on_kafka = [orjson.loads(r.value) for r in records if r.key == lead_id.encode()]
    breaches = [event for event in on_kafka if event["kind"] == "sla_breached"]
    assert len(breaches) == 1 and breaches[0]["previous_rep_id"] == first["rep_id"]
    assert len({event["assignment_id"] for event in on_kafka if event["kind"] == "reassigned"}) == 1


async def test_a_rejected_lead_goes_to_another_rep_and_the_simulator_explains_without_assigning(
    stack: Stack, routing: httpx.AsyncClient
) -> None:
    lead_id = await _post_lead(stack)
    first = await eventually(lambda: _assignment(routing, lead_id), message="lead assigned")
    rejected = await routing.post(f"/v1/assignments/{lead_id}/reject", json={"reason": "not my territory"})
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["rep_id"] not in (None, first["rep_id"])
    assert rejected.json()["reason"].startswith(f"rejected by {first['rep_id']}: not my territory")

    simulated = await routing.post("/v1/routing/simulate", json={"score": 90, "grade": "A1", "country": "JP"})
    assert simulated.status_code == 200, simulated.text
    assert simulated.json()["kind"] == "assigned" and simulated.json()["candidates"]
    assert await _assignment(routing, "simulated") is None
