"""Fault scenarios: each breaks one part of the system at a bad moment while leads keep arriving."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer, TopicPartition

from shared.dlq import replay_dead_letters
from shared.topics import LEADS_CAPTURED, LEADS_OUTCOMES, LEADS_ROUTED, LEADS_SCORED, dead_letter_topic
from tests.faults.cluster import FaultContext
from tests.support.kafka_reader import committed_offset, header, read_topic

Step = Callable[[FaultContext], Awaitable[None]]


async def _nothing(_: FaultContext) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    """A named fault: `prepare` runs before the load starts, `inject` while it runs."""

    name: str
    inject: Step
    prepare: Step = _nothing


def _failpoint_hit(ctx: FaultContext, fraction_low: float, fraction_high: float) -> int:
    return random.randint(int(ctx.stream.count * fraction_low), int(ctx.stream.count * fraction_high))


# --- lead_intake killed while requests are in flight -------------------------------------------------------------


async def kill_intake(ctx: FaultContext) -> None:
    intake = ctx.service("lead_intake")
    await ctx.when_acknowledged(0.3)
    await ctx.signal(intake)
    await ctx.restart(intake)


# --- the outbox relay killed between producing and marking rows sent ---------------------------------------------


async def arm_relay_failpoint(ctx: FaultContext) -> None:
    if ctx.kill_signal is signal.SIGKILL:
        intake = ctx.service("lead_intake")
        intake.stop()
        await ctx.restart(
            intake, {"BATON_LEAD_INTAKE_FAILPOINTS": f"relay.after_publish=exit@{random.randint(20, 60)}"}
        )


async def kill_relay(ctx: FaultContext) -> None:
    intake = ctx.service("lead_intake")
    if ctx.kill_signal is signal.SIGKILL:
        await ctx.wait_exit(intake)
    else:
        await ctx.when_acknowledged(0.3)
        await ctx.signal(intake)
    await ctx.restart(intake)


# --- scoring / routing killed between their database commit and their offset commit ------------------------------


def arm_consumer_failpoint(name: str) -> Step:
    async def arm(ctx: FaultContext) -> None:
        if ctx.kill_signal is signal.SIGKILL:
            service = ctx.service(name)
            service.stop()
            hit = _failpoint_hit(ctx, 0.15, 0.4)
            await ctx.restart(service, {f"BATON_{name.upper()}_FAILPOINTS": f"consumer.after_commit=exit@{hit}"})

    return arm


def kill_consumer(name: str) -> Step:
    async def inject(ctx: FaultContext) -> None:
        service = ctx.service(name)
        if ctx.kill_signal is signal.SIGKILL:
            await ctx.wait_exit(service)
        else:
            await ctx.when_acknowledged(0.3)
            await ctx.signal(service)
        await ctx.restart(service)

    return inject


# --- the broker stopped for 30 s ---------------------------------------------------------------------------------

BROKER_OUTAGE_SECONDS = 30.0


async def broker_outage(ctx: FaultContext) -> None:
    await ctx.when_acknowledged(0.2)
    kafka = ctx.cluster.kafka
    await asyncio.to_thread(kafka.kill if ctx.kill_signal is signal.SIGKILL else lambda: kafka.stop(clean=False))
    started = time.monotonic()
    await ctx.hold(BROKER_OUTAGE_SECONDS)
    ended = time.monotonic()
    acknowledged = ctx.stream.report.acknowledged_between(started, ended)
    ctx.notes["acknowledged_during_outage"] = acknowledged
    if acknowledged == 0 and len(ctx.stream.report.acknowledged) < ctx.stream.count:
        ctx.failures.append("intake stopped acknowledging leads while the broker was down")
    await asyncio.to_thread(kafka.restart)
    ctx.cleared_at = time.monotonic()


# --- PostgreSQL stopped for 15 s ---------------------------------------------------------------------------------

DATABASE_OUTAGE_SECONDS = 15.0


async def database_outage(ctx: FaultContext) -> None:
    await ctx.when_acknowledged(0.2)
    postgres = ctx.cluster.postgres
    await asyncio.to_thread(postgres.kill if ctx.kill_signal is signal.SIGKILL else postgres.halt)
    started = time.monotonic()
    await ctx.hold(DATABASE_OUTAGE_SECONDS)
    ended = time.monotonic()
    report = ctx.stream.report
    # A request already past its commit when the server died may still answer 202 in the first moment.
    ctx.notes["acknowledged_during_outage"] = report.acknowledged_between(started + 1.0, ended)
    ctx.notes["unavailable_during_outage"] = report.unavailable_between(started, ended)
    if report.acknowledged_between(started + 1.0, ended):
        ctx.failures.append("intake answered 202 while PostgreSQL was down")
    if not report.unavailable_between(started, ended) and len(report.acknowledged) < ctx.stream.count:
        ctx.failures.append("intake never answered 503 + Retry-After while PostgreSQL was down")
    await asyncio.to_thread(postgres.resume)
    ctx.cleared_at = time.monotonic()


# --- a consumer group rebalance mid-batch ------------------------------------------------------------------------


async def rebalance_routing(ctx: FaultContext) -> None:
    await ctx.when_acknowledged(0.2)
    replica = ctx.service("routing").replica(len(ctx.cluster.replicas) + 1)
    ctx.cluster.replicas.append(replica)
    replica.start()
    await asyncio.to_thread(replica.wait_ready)
    await ctx.when_acknowledged(0.5)
    await ctx.signal(replica)
    ctx.cleared_at = time.monotonic()


# --- poison messages, and a dead letter replayed after its cause is fixed ----------------------------------------

POISONED_TOPICS = (LEADS_CAPTURED, LEADS_SCORED, LEADS_ROUTED, LEADS_OUTCOMES)
# feedback consumes every topic and alone consumes leads.routed; after a broker outage it may still be working
# through a backlog, so "it got past the poison" is awaited on its committed offset, with a catch-up deadline.
FEEDBACK_GROUP = "baton-feedback"
POISON_CATCH_UP_SECONDS = 180.0


async def dead_letter_a_lead(ctx: FaultContext) -> None:
    """Make routing fail one lead until it is dead-lettered, then 'fix' routing by restarting it without the fault."""
    routing = ctx.service("routing")
    routing.stop()
    await ctx.restart(routing, {"BATON_ROUTING_FAILPOINTS": "consumer.before_effect=raise*3"})
    stack = ctx.cluster.stack
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as client:
        email = f"victim.{uuid.uuid4().hex[:8]}@victim.example"
        answer = await client.post(stack["lead_intake"].url + "/v1/leads", json={"email": email})
    victim = answer.json()["lead_id"]
    letters = await read_topic(
        ctx.cluster.kafka.bootstrap_servers,
        dead_letter_topic(LEADS_SCORED),
        until=lambda seen: any(letter.key == victim.encode() for letter in seen),
    )
    [letter] = [letter for letter in letters if letter.key == victim.encode()]
    ctx.notes["dead_lettered_event"] = header(letter, "ce_id")
    ctx.extra_leads.add(victim)
    await ctx.signal(routing)
    await ctx.restart(routing)


async def poison_and_replay(ctx: FaultContext) -> None:
    await ctx.when_acknowledged(0.2)
    bootstrap = ctx.cluster.kafka.bootstrap_servers
    keys = {topic: f"poison-{uuid.uuid4().hex[:8]}".encode() for topic in POISONED_TOPICS}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        placed = {
            topic: await producer.send_and_wait(topic, value=b"\xffnot an event", key=key)
            for topic, key in keys.items()
        }
    finally:
        await producer.stop()
    event_id = str(ctx.notes["dead_lettered_event"])
    # Replayed twice on purpose: the second replay must change nothing.
    ctx.notes["replayed"] = [
        await replay_dead_letters(bootstrap, dead_letter_topic(LEADS_SCORED), event_ids=[event_id]) for _ in range(2)
    ]
    for topic, metadata in placed.items():
        where = TopicPartition(topic, metadata.partition)
        if not await _committed_past(bootstrap, FEEDBACK_GROUP, where, metadata.offset):
            committed = await committed_offset(bootstrap, FEEDBACK_GROUP, where)
            ctx.failures.append(
                f"{FEEDBACK_GROUP} never got past the poison at {topic}[{where.partition}]@{metadata.offset}"
                f" within {POISON_CATCH_UP_SECONDS:.0f}s (committed offset {committed})"
            )
    for topic, key in keys.items():
        letters = await read_topic(bootstrap, dead_letter_topic(topic), until=_has_key(key))
        if not any(letter.key == key for letter in letters):
            ctx.failures.append(f"poison on {topic} never reached {dead_letter_topic(topic)}")
    ctx.cleared_at = time.monotonic()


async def _committed_past(bootstrap: str, group_id: str, partition: TopicPartition, offset: int) -> bool:
    """Poll until the group has committed beyond `offset` on `partition` (the consumer commits only after it has
    applied or dead-lettered a record); False if the deadline passes first."""
    deadline = time.monotonic() + POISON_CATCH_UP_SECONDS
    while time.monotonic() < deadline:
        if await committed_offset(bootstrap, group_id, partition) > offset:
            return True
        await asyncio.sleep(0.5)  # poll
    return False


def _has_key(key: bytes) -> Callable[[list[Any]], bool]:
    return lambda seen: any(record.key == key for record in seen)


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("intake_killed", kill_intake),
        Scenario("relay_killed_after_publish", kill_relay, arm_relay_failpoint),
        Scenario("scoring_killed_before_offset_commit", kill_consumer("scoring"), arm_consumer_failpoint("scoring")),
        Scenario("routing_killed_before_offset_commit", kill_consumer("routing"), arm_consumer_failpoint("routing")),
        Scenario("broker_down_30s", broker_outage),
        Scenario("database_down_15s", database_outage),
        Scenario("routing_rebalance", rebalance_routing),
        Scenario("poison_and_dlq_replay", poison_and_replay, dead_letter_a_lead),
    )
}
