"""Broker access with a deadline on every call: producers, publishing, topic creation, reachability."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """A record ready for Kafka: topic, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Publisher(Protocol):
    """Publishes records in order, all or raise; the outbox relay and the DLQ depend on this port only."""

    async def publish(self, records: Sequence[OutboundRecord]) -> None: ...

    async def close(self) -> None: ...


class KafkaPublisher:
    """A Publisher over an idempotent aiokafka producer, created lazily and recreated after any failure."""

    def __init__(self, *, bootstrap_servers: str, client_id: str, timeout_seconds: float) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Send every record and wait for all acknowledgements within the deadline."""
        if not records:
            return
        try:
            producer = await self._ensure_producer()
            await asyncio.wait_for(self._send_all(producer, records), self._timeout)
        except BaseException:
            # After a timeout the idempotent producer's sequence state is unknown: start over with a fresh one.
            await self.close()
            raise

    async def _send_all(self, producer: AIOKafkaProducer, records: Sequence[OutboundRecord]) -> None:
        deliveries = [
            await producer.send(record.topic, value=record.value, key=record.key, headers=record.headers)
            for record in records
        ]
        await asyncio.gather(*deliveries)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap_servers,
                client_id=self._client_id,
                enable_idempotence=True,
                acks="all",
                linger_ms=1,
                request_timeout_ms=int(self._timeout * 1000),
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout)
            except BaseException:
                await _stop_quietly(producer, self._timeout)
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        """Stop the producer, if any, without waiting longer than the deadline."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer, self._timeout)


async def _stop_quietly(client: Any, deadline_seconds: float) -> None:
    try:
        await asyncio.wait_for(client.stop(), deadline_seconds)
    except Exception as exc:  # stopping is best effort: the client is being discarded anyway
        log.warning("kafka client did not stop cleanly: %r", exc)


async def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], *, partitions: int, timeout_seconds: float
) -> None:
    """Create missing topics (replication factor 1 suits the single dev node; production pre-creates)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_seconds * 1000))
    await asyncio.wait_for(admin.start(), timeout_seconds)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_seconds))
        missing = [
            NewTopic(name=topic, num_partitions=partitions, replication_factor=1)
            for topic in sorted(set(topics) - existing)
        ]
        if missing:
            # A replica starting beside us may have created them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics(missing), timeout_seconds)
    finally:
        await admin.close()


async def broker_reachable(bootstrap_servers: str, *, timeout_seconds: float = 2.0) -> bool:
    """True if some bootstrap broker accepts a connection within the deadline."""
    for address in bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout_seconds)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False
