"""Dead-letter replay: after fixing what made events fail, put them back on their original topic.

Replaying is idempotent: a replayed event keeps its CloudEvents id, so a consumer that already applied it
(or a second replay) changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.kafka import PLAINTEXT, KafkaPublisher, KafkaSecurity, OutboundRecord, client_options

ERROR_HEADER_PREFIX = "baton_"


async def replay_dead_letters(
    bootstrap_servers: str,
    dead_letter_topic: str,
    *,
    event_ids: Collection[str] = (),
    timeout_seconds: float = 30.0,
    security: KafkaSecurity = PLAINTEXT,
) -> int:
    """Republish the dead letters of `dead_letter_topic` (all, or those with the given ce_id) and count them."""
    letters = await _read_all(bootstrap_servers, dead_letter_topic, timeout_seconds, security)
    chosen = [letter for letter in letters if not event_ids or _header(letter, "ce_id") in event_ids]
    publisher = KafkaPublisher(
        bootstrap_servers=bootstrap_servers,
        client_id="baton-dlq-replay",
        timeout_seconds=timeout_seconds,
        security=security,
    )
    try:
        await publisher.publish([_original(letter) for letter in chosen])
    finally:
        await publisher.close()
    return len(chosen)


def _original(letter: ConsumerRecord[Any, Any]) -> OutboundRecord:
    topic = _header(letter, "baton_original_topic")
    if not topic:
        raise ValueError(f"dead letter at offset {letter.offset} does not name its original topic")
    headers = [(name, bytes(value)) for name, value in letter.headers if not name.startswith(ERROR_HEADER_PREFIX)]
    return OutboundRecord(topic=topic, key=letter.key, value=letter.value, headers=headers)


def _header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    return next((bytes(value).decode() for key, value in record.headers if key == name), None)


async def _read_all(
    bootstrap_servers: str, topic: str, timeout_seconds: float, security: KafkaSecurity
) -> list[ConsumerRecord[Any, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False, **client_options(security)
    )
    await asyncio.wait_for(consumer.start(), timeout_seconds)
    try:
        numbers = await asyncio.wait_for(_partition_numbers(consumer, topic), timeout_seconds)
        partitions = [TopicPartition(topic, number) for number in sorted(numbers)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        return await asyncio.wait_for(_read_until(consumer, ends), timeout_seconds)
    finally:
        await consumer.stop()


async def _partition_numbers(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    cluster = await consumer._client.fetch_all_metadata()
    numbers: set[int] | None = cluster.partitions_for_topic(topic)
    if not numbers:
        raise ValueError(f"topic {topic} does not exist")
    return numbers


async def _read_until(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[ConsumerRecord[Any, Any]]:
    records: list[ConsumerRecord[Any, Any]] = []
    while not await _caught_up(consumer, ends):
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
    return records


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    positions = [await consumer.position(partition) for partition in ends]
    return all(position >= end for position, end in zip(positions, ends.values(), strict=True))
