"""When a scenario loses leads: where they stopped. How many of them reached each topic, each consumer group's
backlog and members, and each service's last own warnings, so a failure on a CI machine names the stalled hop."""

from __future__ import annotations

import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.topics import LEADS_CAPTURED, LEADS_ROUTED, LEADS_SCORED
from tests.faults.cluster import FaultCluster
from tests.support.kafka_reader import read_topic

GROUPS = {
    "baton-scoring": (LEADS_CAPTURED,),
    "baton-routing": (LEADS_SCORED,),
    "baton-feedback": (LEADS_CAPTURED, LEADS_SCORED, LEADS_ROUTED),
}
# A broker outage makes every client log each failed connection attempt: those say nothing about the stall.
NOISE = ("Unable connect to node", "Group Coordinator Request failed", "Marking the coordinator dead")


async def where_leads_stopped(cluster: FaultCluster, acknowledged: set[str]) -> dict[str, Any]:
    """How far the `acknowledged` leads got, and why the rest did not; every part is best effort."""
    bootstrap = cluster.kafka.bootstrap_servers
    found: dict[str, Any] = {}
    for topic in (LEADS_CAPTURED, LEADS_SCORED):
        try:
            records = await read_topic(
                bootstrap, topic, until=lambda seen: acknowledged <= {r.key.decode() for r in seen if r.key}, timeout=10
            )
            found[f"acknowledged leads on {topic}"] = len(acknowledged & {r.key.decode() for r in records if r.key})
        except Exception as exc:
            found[f"acknowledged leads on {topic}"] = repr(exc)
    for group, topics in GROUPS.items():
        try:
            found[group] = await _group_state(bootstrap, group, topics)
        except Exception as exc:
            found[group] = repr(exc)
    for name, service in cluster.stack.services.items():
        found[f"{name} log"] = _own_warnings(service.log_tail(4000))
    return found


async def _group_state(bootstrap: str, group: str, topics: tuple[str, ...]) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    await reader.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        [description] = await admin.describe_consumer_groups([group])
        cluster = await reader._client.fetch_all_metadata()
        partitions = [
            TopicPartition(topic, number) for topic in topics for number in sorted(cluster.partitions_for_topic(topic))
        ]
        ends = await reader.end_offsets(partitions)
    finally:
        await reader.stop()
        await admin.close()
    backlog = {
        f"{tp.topic}[{tp.partition}]": ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in partitions
    }
    return {"backlog": {where: left for where, left in backlog.items() if left}, "group": str(description)[:300]}


def _own_warnings(tail: str, keep: int = 12) -> list[str]:
    """The service's last warnings and errors, repeated connection noise left out, one short line each."""
    lines = []
    for line in tail.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        if entry.get("level") in ("warning", "error", "critical") and not message.startswith(NOISE):
            lines.append(f"{entry.get('time', '')} {entry.get('logger', '')}: {message[:200]}")
    return lines[-keep:]
