"""The connection security settings against live servers: a SASL_SSL broker with a throwaway CA, and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import certifi
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from shared.db import PostgresTls, make_engine
from shared.kafka import KafkaPublisher, OutboundRecord, broker_reachable, ensure_topics
from tests.integration.conftest import fresh_topic
from tests.support.infra import KafkaBroker
from tests.support.kafka_reader import read_topic

PASSWORD = "tls-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def tls_kafka(run_dir: Path) -> Iterator[KafkaBroker]:
    """A broker of this module's own whose only client listener is SASL over TLS."""
    broker = KafkaBroker.start(run_dir, listener="SASL_SSL", sasl_password=PASSWORD)
    yield broker
    broker.stop()


async def test_records_go_through_a_sasl_ssl_broker(tls_kafka: KafkaBroker) -> None:
    security, servers = tls_kafka.security, tls_kafka.bootstrap_servers
    assert security.protocol == "SASL_SSL" and security.ssl_cafile is not None
    topic = fresh_topic("tls")
    await ensure_topics(servers, [topic], partitions=1, timeout_seconds=30, security=security)
    publisher = KafkaPublisher(bootstrap_servers=servers, client_id="test-tls", timeout_seconds=30, security=security)
    try:
        await publisher.publish([OutboundRecord(topic, b"lead-1", b'{"ok": true}')])
    finally:
        await publisher.close()

    records = await read_topic(servers, topic, until=lambda seen: len(seen) >= 1, timeout=30, security=security)

    assert [(record.key, record.value) for record in records] == [(b"lead-1", b'{"ok": true}')]


async def test_the_broker_is_unreachable_without_its_ca_or_with_a_wrong_password(tls_kafka: KafkaBroker) -> None:
    security, servers = tls_kafka.security, tls_kafka.bootstrap_servers
    assert await broker_reachable(servers, security=security)
    assert await broker_reachable(servers, security=replace(security, sasl_mechanism="PLAIN"))
    # The public CAs do not vouch for the throwaway broker certificate.
    assert not await broker_reachable(servers, security=replace(security, ssl_cafile=Path(certifi.where())))
    assert not await broker_reachable(servers, security=replace(security, sasl_password=SecretStr("wrong")))
    assert not await broker_reachable(servers, security=replace(security, protocol="SASL_PLAINTEXT"))
    assert not await broker_reachable(servers)


async def test_database_sslmode_reaches_asyncpg(database_url: str) -> None:
    # The test server runs without TLS: `disable` connects, `require` must then be refused. (A TLS-enabled
    # PostgreSQL is not exercised here; the contexts for each mode are checked in the unit tests.)
    plain = make_engine(database_url, schema="public", tls=PostgresTls(mode="disable"))
    encrypted = make_engine(database_url, schema="public", tls=PostgresTls(mode="require"))
    try:
        async with plain.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        with pytest.raises(Exception, match=r"(?i)ssl"):
            async with encrypted.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await plain.dispose()
        await encrypted.dispose()
