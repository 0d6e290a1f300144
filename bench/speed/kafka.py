"""Kafka helpers the bench and its baselines share (no bench-only dependencies: the baselines run in tests too)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0) -> list[TopicPartition]:
    """The partitions of `topic`, waiting (with a deadline) until its metadata is known."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        numbers = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, number) for number in sorted(numbers)]
        await asyncio.sleep(0.1)  # poll
    raise RuntimeError(f"topic {topic} does not exist")
