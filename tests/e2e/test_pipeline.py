"""End to end on the real broker and database: form post → scored → routed → outcome on the timeline."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import defaultdict
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.topics import LEADS_CAPTURED, LEADS_ROUTED, dead_letter_topic
from tests.support.infra import KafkaBroker
from tests.support.kafka_reader import header, read_topic
from tests.support.polling import eventually
from tests.support.stack import Stack

Records = list[ConsumerRecord[Any, Any]]


def a_lead(tag: str, number: int) -> dict[str, Any]:
    """A realistic form submission with a unique email."""
    return {
        "email": f"buyer{number}.{tag}@acme-{number % 7}.example",
        "first_name": "Kenji",
        "last_name": f"Tanaka{number}",
        "company": f"Acme {number % 7}",
        "job_title": "Head of Operations" if number % 2 else "Analyst",
        "country": "JP",
        "utm_source": "webinar",
        "utm_campaign": "autumn-launch",
    }


async def post_leads(
    stack: Stack, tag: str, count: int, *, concurrency: int = 200, acknowledged: list[str] | None = None
) -> list[str]:
    """Post `count` leads, at most `concurrency` at a time; every one must be acknowledged with 202."""
    acknowledged = [] if acknowledged is None else acknowledged
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=stack["lead_intake"].url, headers=stack.headers, timeout=30) as client:

        async def post(number: int) -> str:
            async with limit:
                response = await client.post("/v1/leads", json=a_lead(tag, number))
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "captured"
            acknowledged.append(response.json()["lead_id"])
            return str(response.json()["lead_id"])

        return list(await asyncio.gather(*(post(number) for number in range(count))))


def assignments_by_lead(records: Records, lead_ids: set[str]) -> dict[str, set[str]]:
    """Distinct first routing decisions (assignment ids of `assigned` events) seen on Kafka for each of `lead_ids`;
    what follows a decision (accepted, sla_breached, reassigned...) is not a second one."""
    decisions: dict[str, set[str]] = defaultdict(set)
    for record in records:
        lead_id = record.key.decode()
        payload = orjson.loads(record.value)
        if lead_id in lead_ids and payload["kind"] == "assigned":
            decisions[lead_id].add(payload["assignment_id"])
    return decisions


async def routed(kafka: KafkaBroker, lead_ids: set[str], *, timeout: float = 90) -> dict[str, set[str]]:
    """Read leads.routed until every lead in `lead_ids` appears (or the deadline passes)."""
    records = await read_topic(
        kafka.bootstrap_servers,
        LEADS_ROUTED,
        until=lambda seen: lead_ids <= set(assignments_by_lead(seen, lead_ids)),
        timeout=timeout,
    )
    return assignments_by_lead(records, lead_ids)


async def test_200_concurrent_leads_are_each_routed_exactly_once(stack: Stack, kafka: KafkaBroker) -> None:
    lead_ids = set(await post_leads(stack, uuid.uuid4().hex[:8], 200))
    assert len(lead_ids) == 200

    decisions = await routed(kafka, lead_ids)

    assert set(decisions) == lead_ids, f"lost: {len(lead_ids - set(decisions))}"
    assert [lead for lead, ids in decisions.items() if len(ids) > 1] == []


async def test_outcome_appears_on_the_lead_timeline(stack: Stack, kafka: KafkaBroker) -> None:
    [lead_id] = await post_leads(stack, uuid.uuid4().hex[:8], 1)
    await routed(kafka, {lead_id})
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as client:
        outcome = {"lead_id": lead_id, "kind": "won", "amount": "1200.00", "currency": "EUR", "rep_id": "rep-a"}
        response = await client.post(stack["feedback"].url + "/v1/outcomes", json=outcome)
        assert response.status_code == 202, response.text

        async def full_journey() -> list[dict[str, Any]] | None:
            answer = await client.get(f"{stack['feedback'].url}/v1/leads/{lead_id}/timeline")
            steps: list[dict[str, Any]] = answer.json().get("steps", []) if answer.status_code == 200 else []
            names = [step["step"] for step in steps]
            return steps if {"captured", "scored", "routed", "outcome:won"} <= set(names) else None

        steps = await eventually(full_journey, message="timeline with captured, scored, routed and won")
    assert [step["step"] for step in steps][:3] == ["captured", "scored", "routed"]
    assert all(step["reason"] for step in steps)
    assert "1200.00 EUR" in steps[-1]["reason"]


async def test_routing_killed_mid_stream_loses_nothing_and_routes_nothing_twice(
    stack: Stack, kafka: KafkaBroker
) -> None:
    acknowledged: list[str] = []
    posting = asyncio.create_task(
        post_leads(stack, uuid.uuid4().hex[:8], 200, concurrency=5, acknowledged=acknowledged)
    )

    async def thirty_routed() -> bool:
        early = set(acknowledged[:30])
        return len(early) == 30 and early <= set(await routed(kafka, early, timeout=5))

    await eventually(thirty_routed, timeout=60, message="routing is mid-stream")
    stack["routing"].signal(signal.SIGKILL)
    assert not posting.done(), "posting finished before routing was killed: not mid-stream"
    stack["routing"].start()
    lead_ids = set(await posting)
    stack["routing"].wait_ready()

    decisions = await routed(kafka, lead_ids)

    assert set(decisions) == lead_ids, f"lost: {len(lead_ids - set(decisions))}"
    assert [lead for lead, ids in decisions.items() if len(ids) > 1] == []


async def test_malformed_lead_gets_422_problem_and_nothing_is_stored(stack: Stack) -> None:
    email = f"bad.{uuid.uuid4().hex[:8]}@acme.example"
    async with httpx.AsyncClient(base_url=stack["lead_intake"].url, headers=stack.headers, timeout=10) as client:
        invalid = await client.post("/v1/leads", json={"email": email, "country": "Narnia", "phone": 42})
        broken = await client.post("/v1/leads", content=b'{"email": ', headers={"content-type": "application/json"})

    assert invalid.status_code == 422
    assert invalid.headers["content-type"].startswith("application/problem+json")
    assert {error["field"] for error in invalid.json()["errors"]} == {"country", "phone"}
    assert broken.status_code == 422
    assert broken.headers["content-type"].startswith("application/problem+json")
    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as connection:
            stored = await connection.scalar(
                text("SELECT count(*) FROM lead_intake.leads WHERE email = :email"), {"email": email}
            )
    finally:
        await engine.dispose()
    assert stored == 0


async def test_garbage_on_leads_captured_goes_to_dlq_and_the_next_lead_flows(stack: Stack, kafka: KafkaBroker) -> None:
    poison_key = f"poison-{uuid.uuid4().hex[:8]}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(LEADS_CAPTURED, value=b"\x00not json at all", key=poison_key)
    finally:
        await producer.stop()
    [lead_id] = await post_leads(stack, uuid.uuid4().hex[:8], 1)

    assert lead_id in await routed(kafka, {lead_id})
    letters = await read_topic(
        kafka.bootstrap_servers,
        dead_letter_topic(LEADS_CAPTURED),
        until=lambda seen: any(record.key == poison_key for record in seen),
    )
    poisoned = [record for record in letters if record.key == poison_key]
    assert poisoned, "poison message not dead-lettered"
    assert poisoned[0].value == b"\x00not json at all"
    assert header(poisoned[0], "baton_original_topic") == LEADS_CAPTURED
    assert header(poisoned[0], "baton_error")
