"""Broker access with a deadline on every call: producers, publishing, topic creation, reachability; and the
connection security (TLS, SASL) every aiokafka client of the services is created with."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest
from pydantic import SecretStr

from shared.settings import KafkaSaslMechanism, KafkaSecurityProtocol, ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How a client encrypts (SSL) and authenticates (SASL) its broker connections; the default is plaintext.
    The password stays a SecretStr until `client_options` hands it to aiokafka, so reprs and logs never show it."""

    protocol: KafkaSecurityProtocol = "PLAINTEXT"
    sasl_mechanism: KafkaSaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> KafkaSecurity:
        """The broker security a service's settings ask for."""
        return cls(
            protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
        )


PLAINTEXT = KafkaSecurity()


def client_options(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin, connection) with this security.
    The result holds the password in clear: pass it straight to the client, never log it."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        # Verifies the broker's certificate and host name against the CA file, else the system's CAs.
        options["ssl_context"] = create_ssl_context(
            cafile=security.ssl_cafile, certfile=security.ssl_certfile, keyfile=security.ssl_keyfile
        )
    if security.protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        password = security.sasl_password.get_secret_value() if security.sasl_password else None
        options |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": password,
        }
    return options


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


# Per partition and request; under the broker's default message.max.bytes (1 MB).
PRODUCER_BATCH_BYTES = 512 * 1024


class KafkaPublisher:
    """A Publisher over an idempotent aiokafka producer, created lazily and recreated after any failure."""

    def __init__(
        self, *, bootstrap_servers: str, client_id: str, timeout_seconds: float, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._security = security
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
                # aiokafka holds one batch per partition and sends one request per broker at a time: a full batch
                # makes `send` wait for the request in flight. With the default 16 KB (a dozen events) a relay
                # under load moved at most a dozen events per partition per round trip.
                max_batch_size=PRODUCER_BATCH_BYTES,
                request_timeout_ms=int(self._timeout * 1000),
                **client_options(self._security),
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
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int,
    timeout_seconds: float,
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    """Create missing topics (replication factor 1 suits the single dev node; production pre-creates)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_seconds * 1000),
        **client_options(security),
    )
    try:
        # Inside the try: a failed start (wrong credentials, say) must not leave the client's connections open.
        await asyncio.wait_for(admin.start(), timeout_seconds)
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


async def broker_reachable(
    bootstrap_servers: str, *, timeout_seconds: float = 2.0, security: KafkaSecurity = PLAINTEXT
) -> bool:
    """True if some bootstrap broker answers a metadata request within the deadline. That takes the TLS and SASL
    handshakes the clients do: wrong credentials, or none where the broker wants some, make it unreachable."""
    options = client_options(security)
    for address in bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            await asyncio.wait_for(
                _ask_metadata(host or "127.0.0.1", int(port), timeout_seconds, options), timeout_seconds
            )
        except (OSError, TimeoutError, ValueError, KafkaError) as exc:
            log.debug("broker %s not reachable: %r", address, exc)
            continue
        return True
    return False


async def _ask_metadata(host: str, port: int, timeout_seconds: float, options: dict[str, Any]) -> None:
    connection = await create_conn(host, port, request_timeout_ms=int(timeout_seconds * 1000), **options)
    try:
        # A SASL listener answers ApiVersions before authentication: only a real request proves access.
        await connection.send(MetadataRequest([]))
    finally:
        connection.close()
