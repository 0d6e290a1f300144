"""Reads a topic from the beginning, outside any consumer group, to check what really reached Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import PLAINTEXT, KafkaSecurity, client_options


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord[Any, Any]]], bool],
    timeout: float = 60.0,
    security: KafkaSecurity = PLAINTEXT,
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of `topic` from offset 0, read until `until(records)` holds or the deadline passes."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None, **client_options(security)
    )
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        partitions = await _partitions(consumer, topic, timeout)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while not until(records) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster = await consumer._client.fetch_all_metadata()
        numbers = cluster.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, number) for number in sorted(numbers)]
        await asyncio.sleep(0.1)  # poll
    raise AssertionError(f"topic {topic} does not exist")


async def committed_offset(bootstrap_servers: str, group_id: str, partition: TopicPartition) -> int:
    """The offset `group_id` last committed on `partition` (-1 if none): everything before it was handled."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id, partitions=[partition])
    finally:
        await admin.close()
    committed = offsets.get(partition)
    return -1 if committed is None else int(committed.offset)


def header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    """A header of a record, decoded."""
    for key, value in record.headers:
        if key == name:
            return bytes(value).decode()
    return None
