"""The bench's transactional relay baseline (bench/baselines.py txhop) does what it claims: each event once, in order,
every outbox row marked sent; against the real broker and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared.envelope import CloudEvent
from shared.kafka import ensure_topics
from tests.integration.conftest import fresh_topic
from tests.support.infra import KafkaBroker, PostgresServer
from tests.support.kafka_reader import header, read_topic
from tests.support.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hop_database(postgres: PostgresServer) -> str:
    return postgres.create_database("baton_txhop_test").replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def topics(kafka: KafkaBroker) -> tuple[str, str]:
    source, target = fresh_topic("txhop-source"), fresh_topic("txhop-target")
    await ensure_topics(kafka.bootstrap_servers, [source, target], partitions=1, timeout_seconds=30)
    return source, target


@pytest.fixture
def running_hop(kafka: KafkaBroker, topics: tuple[str, str], hop_database: str, tmp_path: Path) -> Iterator[Path]:
    """The hop as the bench runs it, in a process of its own; yields the path of its output."""
    source, target = topics
    log_path = tmp_path / "txhop.log"
    with log_path.open("wb") as log:
        hop = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "baselines.py"), "txhop", kafka.bootstrap_servers, source, target,
             hop_database],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield log_path
    finally:
        hop.kill()
        hop.wait(timeout=30)


async def test_each_event_passes_once_in_order_and_is_marked_sent(
    kafka: KafkaBroker, topics: tuple[str, str], hop_database: str, running_hop: Path
) -> None:
    source, target = topics
    events = [CloudEvent(type="dev.baton.test.v1", source="/baton/test", subject="lead-1", data={"n": n})
              for n in range(20)]  # fmt: skip
    sentinel = CloudEvent(type="dev.baton.test.v1", source="/baton/test", subject="lead-1", data={"n": "last"})
    # The third event comes twice (a redelivery): the inbox drops the second copy.
    sent = [*events[:3], events[2], *events[3:], sentinel]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for event in sent:
            key, value, headers = event.to_kafka()
            await producer.send_and_wait(source, value=value, key=key, headers=headers)
    finally:
        await producer.stop()

    records = await read_topic(
        kafka.bootstrap_servers, target, until=lambda got: any(header(r, "ce_id") == sentinel.id for r in got)
    )

    ids = [header(record, "ce_id") for record in records]
    assert ids == [event.id for event in [*events, sentinel]], output_of(running_hop)
    await eventually(lambda: all_marked_sent(hop_database), message="every outbox row marked sent")


def output_of(log_path: Path) -> str:
    """The end of the hop's output, to show why it failed."""
    return log_path.read_text(errors="replace")[-3000:]


async def all_marked_sent(database_url: str) -> bool:
    """The hop has made its outbox and every row in it is marked sent."""
    connection = await asyncpg.connect(database_url)
    try:
        if await connection.fetchval("SELECT to_regclass('outbox')") is None:
            return False
        return int(await connection.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")) == 0
    finally:
        await connection.close()
