"""The best this machine does without Baton, for `make bench`'s ratios.

(a) A raw aiokafka relay of Baton's own event payloads through three hops (produce -> consume -> produce ->
consume -> produce -> consume), no database: the source and sink run in the bench process, each middle hop in
its own process (as scoring and routing do), with Baton's producer settings and a commit after each batch.
(b) A bare FastAPI JSON endpoint on one uvicorn worker: POST /v1/leads validates the body and answers 202.
(c) The same relay with a database transaction per hop, the least any hop that loses nothing and applies nothing
twice must do: each consumed batch inserts its event ids into an inbox (skipping those seen) and the records to
send into an outbox in one transaction, publishes them, marks them sent, then commits its offsets. Raw asyncpg,
each hop its own database on the bench's PostgreSQL; no domain work at all. The floor of Baton's design.

Run as a script it is one of those processes: `baselines.py serve PORT`, `baselines.py hop BOOTSTRAP SRC DST` or
`baselines.py txhop BOOTSTRAP SRC DST DATABASE_URL`.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
import uvicorn  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402
from speed.kafka import topic_partitions  # noqa: E402

from shared.envelope import utc_now  # noqa: E402
from shared.events import LeadCapturedV1  # noqa: E402
from shared.kafka import PRODUCER_BATCH_BYTES  # noqa: E402

RELAY_HOPS = 3
WARM_UP_RECORDS = 50


class LeadIn(BaseModel):
    """The submitted lead, checked for shape only."""

    model_config = ConfigDict(extra="allow")

    email: str


def create_bare_app() -> FastAPI:
    """One JSON endpoint and a readiness probe; no database, no broker, no auth."""
    app = FastAPI()

    @app.post("/v1/leads", status_code=202)
    async def accept(lead: LeadIn) -> dict[str, str]:
        return {"lead_id": str(uuid.uuid4()), "status": "captured"}

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def relay_topics(run: str) -> list[str]:
    """The topic of each hop: the source writes the first, the sink reads the last."""
    return [f"bench.relay.{run}.{hop}" for hop in range(1, RELAY_HOPS + 1)]


def transactional_topics(run: str) -> list[str]:
    """The topics of the transactional relay's hops."""
    return relay_topics(f"tx.{run}")


def producer(bootstrap_servers: str) -> AIOKafkaProducer:
    """A producer configured as Baton's publisher (shared/kafka.py)."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=True, acks="all", linger_ms=1,
                            max_batch_size=PRODUCER_BATCH_BYTES)  # fmt: skip


async def hop_clients(bootstrap_servers: str, source: str, group_id: str) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    """A hop's consumer of `source` (offsets committed by hand, from the start) and its producer, started."""
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
        auto_offset_reset="earliest",
    )  # fmt: skip
    sender = producer(bootstrap_servers)
    await consumer.start()
    await sender.start()
    return consumer, sender


async def next_batch(consumer: AIOKafkaConsumer) -> list[Any]:
    """The records of one fetch, across partitions (empty after 100 ms without any)."""
    batches = await consumer.getmany(timeout_ms=100, max_records=2000)
    return [record for batch in batches.values() for record in batch]


async def forward(sender: AIOKafkaProducer, target: str, records: list[Any]) -> None:
    """Produce each record to `target` as it is; return once the broker acknowledged them all."""
    pending = [await sender.send(target, value=record.value, key=record.key, headers=list(record.headers))
               for record in records]  # fmt: skip
    await asyncio.gather(*pending)


async def relay_hop(bootstrap_servers: str, source: str, target: str) -> None:
    """Consume `source`, produce each record to `target`, commit once the batch is acknowledged; forever."""
    consumer, sender = await hop_clients(bootstrap_servers, source, f"relay-{source}")
    while True:
        records = await next_batch(consumer)
        if records:
            await forward(sender, target, records)
            await consumer.commit()


TRANSACTIONAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (event_id text PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY, topic text NOT NULL, message_key bytea, value bytea NOT NULL, headers jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
"""


async def transactional_hop(bootstrap_servers: str, source: str, target: str, database_url: str) -> None:
    """Consume `source`; per batch, one transaction records the new event ids in the inbox and their records in the
    outbox; publish those, mark them sent, commit the offsets; forever."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    await connection.execute(TRANSACTIONAL_SCHEMA)
    consumer, sender = await hop_clients(bootstrap_servers, source, f"txrelay-{source}")
    while True:
        records = await next_batch(consumer)
        if not records:
            continue
        ids = [_event_id(record) for record in records]
        async with connection.transaction():
            new = {row[0] for row in await connection.fetch(_INBOX_INSERT, ids)}
            fresh = []
            for event_id, record in zip(ids, records, strict=True):
                if event_id in new:  # the first copy only: a batch may hold a redelivery too
                    new.discard(event_id)
                    fresh.append(record)
            rows = await connection.fetch(
                _OUTBOX_INSERT, target, [record.key for record in fresh], [record.value for record in fresh],
                [orjson.dumps([(name, value.decode()) for name, value in record.headers]).decode() for record in fresh],
            )  # fmt: skip
        await forward(sender, target, fresh)
        await connection.execute(_MARK_SENT, [row[0] for row in rows])
        await consumer.commit()


_INBOX_INSERT = "INSERT INTO inbox (event_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING event_id"
_OUTBOX_INSERT = (
    "INSERT INTO outbox (topic, message_key, value, headers) SELECT $1, * FROM unnest($2::bytea[], $3::bytea[], "
    "$4::jsonb[]) RETURNING id"
)
_MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])"


def _event_id(record: Any) -> str:
    for name, value in record.headers:
        if name == "ce_id":
            return str(value.decode())
    return f"{record.topic}/{record.partition}/{record.offset}"


def captured_event(fields: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """The Kafka record intake would publish for these form fields."""
    payload = LeadCapturedV1(lead_id=str(uuid.uuid4()), captured_at=utc_now(), **fields)
    return payload.to_event(source="/baton/bench").to_kafka()


async def relay_throughput(
    bootstrap_servers: str, topics: list[str], records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> dict[str, Any]:
    """Produce `records` as one backlog to the first topic, as fast as the producer goes; messages/s at the sink
    from the first send to the last arrival (the hops must already be running). The first `WARM_UP_RECORDS` go
    ahead, alone and not counted: distinct records, as a hop with an inbox would drop a second copy."""
    warm_up, records = records[:WARM_UP_RECORDS], records[WARM_UP_RECORDS:]
    sink = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
    source = producer(bootstrap_servers)
    await sink.start()
    await source.start()
    try:
        partitions = await topic_partitions(sink, topics[-1])
        sink.assign(partitions)
        await sink.seek_to_end(*partitions)
        for partition in partitions:
            await sink.position(partition)
        await _warm_up(source, sink, topics[0], warm_up)
        began = time.monotonic()
        sending = asyncio.create_task(_send_all(source, topics[0], records))
        arrived, last = await _count_arrivals(sink, len(records), deadline=began + 300)
        await sending
    finally:
        await source.stop()
        await sink.stop()
    seconds = last - began
    return {"messages": len(records), "arrived": arrived, "seconds": round(seconds, 2),
            "messages_per_second": round(arrived / seconds, 1) if seconds > 0 else 0.0}  # fmt: skip


async def _warm_up(
    source: AIOKafkaProducer,
    sink: AIOKafkaConsumer,
    topic: str,
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
) -> None:
    # The hops' consumer groups join lazily: wait until a few records make the whole trip.
    await _send_all(source, topic, records)
    arrived, _ = await _count_arrivals(sink, len(records), deadline=time.monotonic() + 120)
    if arrived < len(records):
        raise RuntimeError(f"relay warm-up: {arrived}/{len(records)} records arrived")


async def _send_all(source: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes, list[Any]]]) -> None:
    pending = [await source.send(topic, value=value, key=key, headers=headers) for key, value, headers in records]
    await asyncio.gather(*pending)


async def _count_arrivals(sink: AIOKafkaConsumer, wanted: int, *, deadline: float) -> tuple[int, float]:
    arrived, last = 0, time.monotonic()
    while arrived < wanted and time.monotonic() < deadline:
        batches = await sink.getmany(timeout_ms=200, max_records=5000)
        count = sum(len(records) for records in batches.values())
        if count:
            arrived, last = arrived + count, time.monotonic()
    return arrived, last


def main(arguments: list[str]) -> None:
    """`serve PORT`, `hop BOOTSTRAP SOURCE TARGET` or `txhop BOOTSTRAP SOURCE TARGET DATABASE_URL`."""
    if arguments[:1] == ["serve"]:
        uvicorn.run(create_bare_app(), host="127.0.0.1", port=int(arguments[1]), log_level="warning", access_log=False)
    elif arguments[:1] == ["hop"]:
        asyncio.run(relay_hop(arguments[1], arguments[2], arguments[3]))
    elif arguments[:1] == ["txhop"]:
        asyncio.run(transactional_hop(arguments[1], arguments[2], arguments[3], arguments[4]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
