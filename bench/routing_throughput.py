"""Assignments/s of the routing consumer and time from `leads.scored` to `leads.routed`, on the real broker and
PostgreSQL, plus the fairness of weighted round robin over what was assigned.

Starts a throwaway PostgreSQL and Kafka with the project's scripts and one routing process with reps of weights
1, 2, 3 and 4; produces BENCH_LEADS scored leads to `leads.scored` as fast as the producer goes (a backlog) and,
separately, a paced trickle (BENCH_RATE leads/s) for latency; reads `leads.routed` back. Latency is the Kafka
timestamp of the routed record minus that of the scored record (one machine, one clock). Prints a table and saves
var/reports/routing-*.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from one_service import ADMIN_KEY, one_service  # noqa: E402

from shared.envelope import utc_now  # noqa: E402
from shared.events import LeadScoredV1  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.topics import ALL_TOPICS, LEADS_ROUTED  # noqa: E402
from tests.support.infra import KafkaBroker  # noqa: E402

BACKLOG = int(os.environ.get("BENCH_LEADS", "3000"))
RATE = float(os.environ.get("BENCH_RATE", "50"))
TRICKLE_SECONDS = float(os.environ.get("BENCH_TRICKLE_SECONDS", "20"))
WEIGHTS = {"rep-1": 1, "rep-2": 2, "rep-3": 3, "rep-4": 4}


def _request(url: str, body: dict[str, Any] | None = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    request.add_header("Authorization", f"Bearer {ADMIN_KEY}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10):
        pass


def scored(lead_id: str, number: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A scored lead as scoring would publish it."""
    payload = LeadScoredV1(
        lead_id=lead_id, score=40 + number % 60, verdict="qualified", model_version="bench", contributions=(),
        scored_at=utc_now(), grade="B2", lead={"lead_id": lead_id, "email": f"{lead_id}@bench.example",
                                               "country": "JP", "company_size": "51-200"},
    )  # fmt: skip
    return payload.to_event(source="/baton/bench").to_kafka()


async def produce(bootstrap: str, count: int, *, rate: float | None) -> dict[str, int]:
    """Send `count` scored leads (paced at `rate`/s when given); returns lead id → produce timestamp (ms)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent: dict[str, int] = {}
    started = time.monotonic()
    try:
        futures = []
        for number in range(count):
            if rate is not None:
                await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))  # pace the arrivals
            lead_id = str(uuid.uuid4())
            key, value, headers = scored(lead_id, number)
            futures.append((lead_id, await producer.send("leads.scored", value=value, key=key, headers=headers)))
        for lead_id, future in futures:
            sent[lead_id] = (await future).timestamp
    finally:
        await producer.stop()
    return sent


async def collect(bootstrap: str, wanted: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Read leads.routed from the start until every wanted lead's first decision is seen."""
    consumer = AIOKafkaConsumer(LEADS_ROUTED, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not wanted <= set(seen) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    lead_id = record.key.decode()
                    payload = orjson.loads(record.value)
                    if lead_id in wanted and payload["kind"] in ("assigned", "unassigned") and lead_id not in seen:
                        seen[lead_id] = {"timestamp": record.timestamp, "rep_id": payload["rep_id"]}
    finally:
        await consumer.stop()
    return seen


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))] if ordered else float("nan")


async def measure(bootstrap: str) -> dict[str, Any]:
    """Backlog throughput, then paced latency."""
    began = time.monotonic()
    backlog = await produce(bootstrap, BACKLOG, rate=None)
    routed = await collect(bootstrap, set(backlog), timeout=600)
    stamps = [routed[lead]["timestamp"] for lead in routed]
    span = (max(stamps) - min(backlog.values())) / 1000 if stamps else float("nan")
    shares = Counter(entry["rep_id"] for entry in routed.values() if entry["rep_id"])
    total_weight = sum(WEIGHTS.values())
    assigned = sum(shares.values())
    spread = max(abs(shares[rep] / assigned - weight / total_weight) for rep, weight in WEIGHTS.items())
    trickle = await produce(bootstrap, int(RATE * TRICKLE_SECONDS), rate=RATE)
    latencies_seen = await collect(bootstrap, set(trickle), timeout=120)
    latencies = [latencies_seen[lead]["timestamp"] - trickle[lead] for lead in latencies_seen]
    return {
        "backlog_leads": BACKLOG,
        "backlog_routed": len(routed),
        "assignments_per_second": round(len(routed) / span, 1),
        "fairness_spread": round(spread, 4),
        "shares": dict(shares),
        "trickle_rate": RATE,
        "trickle_routed": len(latencies_seen),
        "latency_ms": {
            name: percentile(latencies, share)
            for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        },
        "wall_seconds": round(time.monotonic() - began, 1),
    }


def main() -> None:
    """Start the parts, run the measurement, report it."""

    def topics(kafka: KafkaBroker) -> None:
        asyncio.run(ensure_topics(kafka.bootstrap_servers, list(ALL_TOPICS), partitions=3, timeout_seconds=30))

    with one_service("routing", before_start=topics) as service:
        for rep_id, weight in WEIGHTS.items():
            _request(service.url + "/v1/reps", {"rep_id": rep_id, "name": rep_id, "email": f"{rep_id}@bench.example",
                                                "weight": weight})  # fmt: skip
        result = asyncio.run(measure(service.kafka.bootstrap_servers))
    report(result)


def report(result: dict[str, Any]) -> None:
    """Print and save."""
    latency = result["latency_ms"]
    print(f"routing consumer: {result['assignments_per_second']} assignments/s over a backlog of "
          f"{result['backlog_routed']}/{result['backlog_leads']} scored leads")  # fmt: skip
    print(f"leads.scored -> leads.routed at {result['trickle_rate']:.0f} leads/s: p50 {latency['p50']} ms, "
          f"p95 {latency['p95']} ms, p99 {latency['p99']} ms, max {latency['max']} ms "
          f"({result['trickle_routed']} leads)")  # fmt: skip
    print(
        f"weighted round robin (weights {WEIGHTS}): shares {result['shares']}, spread {result['fairness_spread']:.2%}"
    )
    reports = ROOT / "var" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"routing-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
