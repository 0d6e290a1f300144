"""Report latency over aggregates of BENCH_LEADS (1,000,000) leads in PostgreSQL, and events/s of feedback's consumer.

Starts a throwaway PostgreSQL; generates a year of realistic lead cards (skewed campaigns, a funnel with MQL, SQL,
won, lost, recycled; log-normal speed to lead; SLA misses), computes their report cells with the service's own
`aggregates.contributions` and bulk-loads both tables with COPY. Checks that summed cells equal a full scan of the
cards on 3 random reports, then times report queries as the API runs them (`report_store.summed_cells` plus
percentiles from the histogram buckets) over random 7/30/90/365-day ranges. Last, starts a throwaway Kafka and the
real feedback process on a fresh database, produces a backlog of captured/scored/routed events and polls how fast
the `baton-feedback` group commits through it. Prints a table and saves var/reports/feedback-*.json.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import accumulate, islice
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.errors import KafkaError  # noqa: E402
from sqlalchemy import ColumnElement, and_, func, literal, select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from services.feedback import reports  # noqa: E402
from services.feedback.aggregates import (  # noqa: E402
    AMOUNT_METRICS,
    BUCKET_BOUNDS,
    BUCKETS,
    METRICS,
    NONE,
    LeadCard,
    bucket_of,
    contributions,
    percentile_from_buckets,
)
from services.feedback.report_store import summed_cells  # noqa: E402
from services.feedback.store import MIGRATIONS, MONTHLY_ROLLUP_SQL, lead_cards, report_cells  # noqa: E402
from shared.db import make_engine, migrate  # noqa: E402
from shared.envelope import utc_now  # noqa: E402
from shared.events import LeadCapturedV1, LeadRoutedV1, LeadScoredV1  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.sessions import Sessions, make_sessions  # noqa: E402
from shared.topics import ALL_TOPICS  # noqa: E402
from tests.support.infra import KafkaBroker, PostgresServer, free_port  # noqa: E402

LEADS = int(os.environ.get("BENCH_LEADS", "1000000"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "500"))
EVENT_LEADS = int(os.environ.get("BENCH_EVENT_LEADS", "5000"))
SEED = int(os.environ.get("BENCH_SEED", "7"))
CHUNK = 50_000
DAYS = 365
RANGES = (7, 30, 90, 365)
TIMED_DIMENSIONS = ("all", "campaign", "source", "country", "rep", "score_band", "competitor", "lost_reason",
                    "last_campaign", "grade")  # fmt: skip
CHECKED_DIMENSIONS = ("campaign", "source", "country", "rep", "competitor", "lost_reason", "grade", "industry")
ADMIN_KEY = "bench-admin-key"
SCHEMA = "feedback"
SLA_SECONDS = 3600

THEMES = ("webinar", "ebook", "brand", "retarget", "launch", "demo", "newsletter", "partner", "event", "trial")
SOURCES = ("google", "linkedin", "facebook", "newsletter", "partner", "direct", "bing", "events")
MEDIUMS = ("cpc", "paid_social", "email", "organic", "referral", "display")
CAMPAIGNS = tuple((f"{THEMES[n % 10]}-{2024 + n // 20}-{n:02d}", SOURCES[n * 7 % 8], MEDIUMS[n * 5 % 6])
                  for n in range(40))  # fmt: skip
COUNTRIES = ("US", "GB", "DE", "FR", "JP", "CA", "AU", "NL", "SE", "ES", "IT", "IN", "BR", "MX", "SG", "KR", "CH", "PL",
             "BE", "DK", "NO", "FI", "IE", "AT", "NZ", "ZA", "AR", "CL", "PT", "IL")  # fmt: skip
REGIONS = {"US": "NA", "CA": "NA", "MX": "LATAM", "BR": "LATAM", "AR": "LATAM", "CL": "LATAM", "JP": "APAC",
           "AU": "APAC", "IN": "APAC", "SG": "APAC", "KR": "APAC", "NZ": "APAC"}  # fmt: skip
SIZES = ("1-10", "11-50", "51-200", "201-1000", "1000+")
INDUSTRIES = ("software", "finance", "retail", "health", "manufacturing", "education", "media", "logistics",
              "government", "energy")  # fmt: skip
SENIORITIES = ("ic", "manager", "director", "vp", "c-level")
INTERESTS = ("routing", "scoring", "reports", "api", "crm-sync", "forms", "enrichment", "sla", "ai", "security",
             "pricing", "integrations")  # fmt: skip
COMPETITORS = ("hubspot", "marketo", "pardot", "salesloft", "outreach", "leandata")
FORMS = ("demo-request", "trial-signup", "ebook-download", "contact-us", "webinar-registration")
REPS = tuple((f"rep-{n:02d}", f"team-{'abcd'[n % 4]}") for n in range(20))
LOST_REASONS = ("price", "no_budget", "timing", "competitor", "no_decision", "missing_feature")
DQ_REASONS = ("student", "spam", "too_small", "no_need")

Key = tuple[str, str, str]  # (day, dimension, value)


class Timing(NamedTuple):
    """One timed sample: summed_cells for `dimension` and the whole `report` grouped by it, over `days` days."""

    dimension: str
    days: int
    report: str
    cells_ms: float
    report_ms: float


def _cum(weights: list[float]) -> list[float]:
    return list(accumulate(weights))


CAMPAIGN_CUM = _cum([1 / (n + 1) ** 1.1 for n in range(40)])
COUNTRY_CUM = _cum([1 / (n + 1) ** 0.9 for n in range(30)])


class Population:
    """Realistic lead cards over the DAYS days before `end` (a seeded random stream)."""

    def __init__(self, seed: int, end: date) -> None:
        self.rng = random.Random(seed)
        self.start = datetime(end.year, end.month, end.day, tzinfo=UTC) - timedelta(days=DAYS)
        # Volume grows over the year; weekends bring 40%.
        days = [(0.7 + 0.6 * n / DAYS) * (0.4 if (self.start + timedelta(days=n)).weekday() >= 5 else 1)
                for n in range(DAYS)]  # fmt: skip
        self.day_cum = _cum(days)

    def cards(self, count: int) -> Iterator[LeadCard]:
        """`count` cards."""
        for number in range(count):
            yield self.card(number)

    def card(self, number: int) -> LeadCard:
        """One lead: who it is, where it came from, then how far it went down the funnel."""
        rng = self.rng
        day = rng.choices(range(DAYS), cum_weights=self.day_cum)[0]
        captured = self.start + timedelta(days=day, seconds=rng.random() * 86400)
        campaign, source, medium = rng.choices(CAMPAIGNS, cum_weights=CAMPAIGN_CUM)[0]
        country = rng.choices(COUNTRIES, cum_weights=COUNTRY_CUM)[0]
        score = min(100, max(0, round(rng.gauss(48, 22))))
        card = LeadCard(
            lead_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            captured_at=captured, email=f"lead{number}@company{number % 90_000}.example", source=source,
            medium=medium, campaign=campaign,
            last_campaign=rng.choices(CAMPAIGNS, cum_weights=CAMPAIGN_CUM)[0][0] if rng.random() < 0.15 else campaign,
            form=rng.choice(FORMS), country=country, region=REGIONS.get(country, "EMEA"),
            company_size=rng.choice(SIZES), industry=rng.choice(INDUSTRIES), seniority=rng.choice(SENIORITIES),
            interests=tuple(rng.sample(INTERESTS, rng.choice((0, 1, 1, 2, 2, 3)))),
            competitor=rng.choice(COMPETITORS) if rng.random() < 0.55 else None, score=score,
            grade="DCBAA"[score // 25] + str(rng.randint(1, 4)),
            predicted=round(min(0.99, max(0.01, score / 200 + rng.random() * 0.2)), 2),
        )  # fmt: skip
        if rng.random() >= score / 120:
            return card.with_(verdict="nurture")  # ~40% become MQLs, the better scored more often
        return self.worked(card.with_(verdict="qualified", qualified_at=captured + timedelta(seconds=2)))

    def worked(self, card: LeadCard) -> LeadCard:
        """An MQL: assigned, maybe an SLA miss and a reassignment, then accepted (70%) or not."""
        rng = self.rng
        rep, team = rng.choice(REPS)
        assigned = card.captured_at + timedelta(seconds=rng.lognormvariate(math.log(1.5), 1.0))
        card = card.with_(rep_id=rep, team=team, assigned_at=assigned)
        touch = assigned + timedelta(seconds=rng.lognormvariate(math.log(1200), 1.4))
        if (touch - assigned).total_seconds() > SLA_SECONDS:
            other, other_team = rng.choice([r for r in REPS if r[0] != rep])
            card = card.with_(sla_missed_by=(rep,), rep_id=other, team=other_team)
        if rng.random() < 0.7:
            accepted = card.with_(touched_at=touch, accepted_at=touch, sla_met=not card.sla_missed_by,
                                  stage=rng.choice(("accepted", "contacted", "meeting_booked")))  # fmt: skip
            return self.pipeline(accepted)
        roll = rng.random()
        if roll < 0.5:
            return card.with_(state="disqualified", touched_at=touch, lost_at=touch, lost_reason=rng.choice(DQ_REASONS))
        if roll < 0.75:
            return self.recycled(card)
        return card

    def pipeline(self, card: LeadCard) -> LeadCard:
        """Accepted: 40% become SQLs, of which 30% are won and 50% lost; some of the rest are lost or recycled."""
        rng = self.rng
        later = card.captured_at + timedelta(days=rng.uniform(3, 60))
        if rng.random() < 0.4:
            card = card.with_(sql_at=card.captured_at + timedelta(days=rng.uniform(1, 20)), stage="qualified")
            roll = rng.random()
            if roll < 0.3:
                return self.won(card, later)
            if roll < 0.8:
                return self.lost(card, later)
            return card
        roll = rng.random()
        if roll < 0.3:
            return self.lost(card, later)
        if roll < 0.45:
            return self.recycled(card)
        return card

    def won(self, card: LeadCard, at: datetime, *, recycled_won: bool = False) -> LeadCard:
        """A deal, in whole dollars."""
        amount = Decimal(round(self.rng.lognormvariate(math.log(18_000), 0.8)))
        return card.with_(state="won", won_at=at, won_amount=amount, currency="USD", recycled_won=recycled_won)

    def lost(self, card: LeadCard, at: datetime) -> LeadCard:
        """Lost, to a competitor (the incumbent, mostly) a third of the time."""
        reason = self.rng.choice(LOST_REASONS)
        lost_to = (card.competitor or self.rng.choice(COMPETITORS)) if reason == "competitor" else None
        return card.with_(state="lost", lost_at=at, lost_reason=reason, lost_to=lost_to)

    def recycled(self, card: LeadCard) -> LeadCard:
        """Back to nurture; a fifth come back qualified, a quarter of those are won."""
        card = card.with_(state="recycled", stage="captured", recycled=1)
        if self.rng.random() < 0.2:
            card = card.with_(recycled_requalified=True)
            if self.rng.random() < 0.25:
                return self.won(card, card.captured_at + timedelta(days=90), recycled_won=True)
        return card


class Cells:
    """Report cells summed in memory: per metric, (day, dimension, value) → total."""

    def __init__(self) -> None:
        self.totals: dict[str, Counter[Key]] = defaultdict(Counter)

    def add(self, card: LeadCard) -> None:
        """The card's contributions; cells that get the same amounts are counted in one C-level update."""
        day = card.day
        cells = contributions(card)
        common = cells[("all", "all")]
        same: list[Key] = []
        for (dimension, value), amounts in cells.items():
            if amounts == common:
                same.append((day, dimension, value))
            else:
                self._add([(day, dimension, value)], amounts)
        self._add(same, common)

    def _add(self, keys: list[Key], amounts: Mapping[str, float | Decimal]) -> None:
        for metric, amount in amounts.items():
            counter = self.totals[metric]
            if amount == 1:
                counter.update(keys)
            else:
                for key in keys:
                    counter[key] += amount  # type: ignore[assignment]

    def records(self) -> list[tuple[Any, ...]]:
        """Rows for COPY in report_cells' column order, sorted like they arrive (by day)."""
        keys = sorted({key for counter in self.totals.values() for key in counter})
        columns = [self.totals[name] for name in METRICS]
        return [(*key, *(_cell_value(name, column.get(key, 0)) for name, column in zip(METRICS, columns, strict=True)))
                for key in keys]  # fmt: skip


def _cell_value(name: str, total: Any) -> Any:
    return Decimal(f"{total:.4f}") if name in AMOUNT_METRICS else int(total)


def card_record(card: LeadCard) -> tuple[Any, ...]:
    """A card as a lead_cards row for COPY (JSON columns as text)."""
    values = dict(vars(card))
    values["interests"] = orjson.dumps(list(card.interests)).decode()
    values["sla_missed_by"] = orjson.dumps(list(card.sla_missed_by)).decode()
    values["day"] = card.day
    return tuple(values[column.name] for column in lead_cards.columns)


def raw_dsn(url: str) -> str:
    """The SQLAlchemy URL as a libpq one."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def load(url: str) -> dict[str, Any]:
    """Migrate, generate, COPY; returns timings and sizes."""
    engine = make_engine(url, schema=SCHEMA)
    await migrate(engine, MIGRATIONS, schema=SCHEMA)
    await engine.dispose()
    population, cells = Population(SEED, datetime.now(UTC).date()), Cells()
    connection = await asyncpg.connect(raw_dsn(url))
    began, spent_copying = time.monotonic(), 0.0
    try:
        generated = population.cards(LEADS)
        for start in range(0, LEADS, CHUNK):
            records = []
            for card in islice(generated, CHUNK):
                cells.add(card)
                records.append(card_record(card))
            copy_began = time.monotonic()
            columns = [column.name for column in lead_cards.columns]
            await connection.copy_records_to_table("lead_cards", records=records, columns=columns, schema_name=SCHEMA)
            spent_copying += time.monotonic() - copy_began
            print(f"  {start + len(records):>9,} cards loaded, {time.monotonic() - began:6.1f} s", flush=True)
        rows = cells.records()
        columns = [column.name for column in report_cells.columns]
        await connection.copy_records_to_table("report_cells", records=rows, columns=columns, schema_name=SCHEMA)
        await connection.execute(f"SET search_path TO {SCHEMA}; {MONTHLY_ROLLUP_SQL}")
        analyzed = time.monotonic()
        await connection.execute("VACUUM ANALYZE feedback.lead_cards")
        await connection.execute("VACUUM ANALYZE feedback.report_cells")
        await connection.execute("VACUUM ANALYZE feedback.report_cells_monthly")
        sizes = {table: await connection.fetchval(f"SELECT pg_size_pretty(pg_total_relation_size('feedback.{table}'))")
                 for table in ("lead_cards", "report_cells")}  # fmt: skip
    finally:
        await connection.close()
    return {"leads": LEADS, "cells": len(rows), "seconds": round(time.monotonic() - began, 1),
            "copy_seconds": round(spent_copying, 1), "vacuum_analyze_seconds": round(time.monotonic() - analyzed, 1),
            "sizes": sizes, "first_day": population.start.date().isoformat()}  # fmt: skip


def day_range(rng: random.Random, first: date, length: int) -> tuple[str, str]:
    """A random range of `length` capture days inside the loaded year."""
    start = first + timedelta(days=rng.randrange(DAYS - length + 1))
    return start.isoformat(), (start + timedelta(days=length - 1)).isoformat()


def _dimension_expression(dimension: str) -> ColumnElement[Any]:
    if dimension == "all":
        return literal("all")
    column = lead_cards.c["rep_id" if dimension == "rep" else dimension]
    return func.coalesce(func.nullif(column, ""), NONE)


async def scanned(engine: AsyncEngine, dimension: str, day_from: str, day_to: str) -> dict[str, tuple[Any, ...]]:
    """The report's numbers by a full scan of the cards (what the cells spare us)."""
    c = lead_cards.c
    value = _dimension_expression(dimension)
    touch = func.extract("epoch", c.touched_at - c.captured_at)
    query = (
        select(value, func.count(), func.count(c.qualified_at), func.count(c.accepted_at), func.count(c.sql_at),
               func.count().filter(c.state == "won"), func.count().filter(c.state == "lost"),
               func.coalesce(func.sum(c.won_amount).filter(c.state == "won"), 0),
               func.count().filter(func.json_array_length(c.sla_missed_by) > 0), func.count(c.touched_at),
               func.percentile_disc(0.5).within_group(touch), func.percentile_disc(0.9).within_group(touch))
        .where(and_(c.day >= day_from, c.day <= day_to))
        .group_by(value)
    )  # fmt: skip
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return {row[0]: (*row[1:10], _bound(row[10]), _bound(row[11])) for row in rows}


def _bound(seconds: Any) -> float | None:
    # The upper bound of the bucket a duration falls in: what percentile_from_buckets answers for it.
    return None if seconds is None else float(BUCKET_BOUNDS[min(bucket_of(seconds), len(BUCKET_BOUNDS) - 1)])


def from_cells(summed: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """The same numbers from summed cells."""
    names = ("captured", "mql", "accepted", "sql", "won", "lost", "won_amount", "sla_missed_leads", "touched")
    result = {}
    for value, metrics in summed.items():
        if metrics["captured"]:  # a rep's cell may hold only SLA misses of leads now owned by someone else
            touch = [metrics[f"touch_b{n}"] for n in range(BUCKETS)]
            result[value] = (*(metrics[name] for name in names), percentile_from_buckets(touch, 0.5),
                             percentile_from_buckets(touch, 0.9))  # fmt: skip
    return result


async def check(engine: AsyncEngine, first: date, rng: random.Random) -> list[dict[str, Any]]:
    """Summed cells against full scans on 3 random reports."""
    sessions, checks = make_sessions(engine), []
    for dimension in rng.sample(CHECKED_DIMENSIONS, 3):
        day_from, day_to = day_range(rng, first, rng.choice(RANGES))
        async with sessions() as session:
            cells = from_cells(await summed_cells(session, dimension=dimension, day_from=day_from, day_to=day_to))
        began = time.monotonic()
        scan = await scanned(engine, dimension, day_from, day_to)
        scan_ms = round((time.monotonic() - began) * 1000)
        differing = sorted(value for value in set(cells) | set(scan) if cells.get(value) != scan.get(value))
        checks.append({"dimension": dimension, "from": day_from, "to": day_to, "groups": len(scan),
                       "leads": sum(row[0] for row in scan.values()), "scan_ms": scan_ms, "match": not differing,
                       "differing": {v: [cells.get(v), scan.get(v)] for v in differing[:3]}})  # fmt: skip
    return checks


async def cells_once(sessions: Sessions, dimension: str, day_from: str, day_to: str) -> None:
    """One dimension's summed cells, then speed-to-lead percentiles per group from the histogram buckets."""
    async with sessions() as session:
        summed = await summed_cells(session, dimension=dimension, day_from=day_from, day_to=day_to)
    for metrics in summed.values():
        for histogram in ("assign", "touch"):
            buckets = [float(metrics[f"{histogram}_b{n}"]) for n in range(BUCKETS)]
            for share in (0.5, 0.9, 0.99):
                percentile_from_buckets(buckets, share)


async def report_once(sessions: Sessions, report: str, dimension: str, day_from: str, day_to: str) -> None:
    """What GET /v1/reports/{report} does: in one session, each needed dimension's summed cells; then the body."""
    cells: dict[str, Any] = {}
    async with sessions() as session:
        for needed in reports.dimensions_needed(report, dimension):
            cells[needed] = await summed_cells(session, dimension=needed, day_from=day_from, day_to=day_to)
    body = reports.build_report(report, group_by=dimension, day_from=date.fromisoformat(day_from),
                                day_to=date.fromisoformat(day_to), cells=cells)  # fmt: skip
    json.dumps(body)  # as JSONResponse renders it


async def latencies(engine: AsyncEngine, first: date, rng: random.Random) -> list[Timing]:
    """Warm up, then time QUERIES summed_cells calls and QUERIES whole reports on random dimensions and ranges."""
    sessions, timed = make_sessions(engine), []
    for number in range(QUERIES + 40):
        dimension, length, report = rng.choice(TIMED_DIMENSIONS), rng.choice(RANGES), rng.choice(reports.REPORTS)
        day_from, day_to = day_range(rng, first, length)
        began = time.perf_counter()
        await cells_once(sessions, dimension, day_from, day_to)
        middle = time.perf_counter()
        await report_once(sessions, report, dimension, day_from, day_to)
        cells_ms, report_ms = (middle - began) * 1000, (time.perf_counter() - middle) * 1000
        if number >= 40:  # the first 40 warm the pool, the plan cache and the buffers
            timed.append(Timing(dimension, length, report, cells_ms, report_ms))
    return timed


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))] if ordered else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms."""
    shares = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
    return {"n": len(values), **{name: round(percentile(values, share), 1) for name, share in shares}}


def latency_tables(timed: list[Timing]) -> dict[str, dict[str, dict[str, float]]]:
    """Per range length and overall, for summed_cells and whole reports; per dimension and per report."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("cells_ms", "report_ms"):
        rows = {f"{days}d": summary([getattr(t, kind) for t in timed if t.days == days]) for days in RANGES}
        tables[kind] = {**rows, "overall": summary([getattr(t, kind) for t in timed])}
    tables["cells_ms_by_dimension"] = {name: summary([t.cells_ms for t in timed if t.dimension == name])
                                       for name in TIMED_DIMENSIONS}  # fmt: skip
    tables["report_ms_by_report"] = {name: summary([t.report_ms for t in timed if t.report == name])
                                     for name in reports.REPORTS}  # fmt: skip
    return tables


async def reports_phase(url: str, first: date) -> dict[str, Any]:
    """Correctness check, then latency."""
    engine, rng = make_engine(url, schema=SCHEMA), random.Random(SEED + 1)
    try:
        checks = await check(engine, first, rng)
        timed = await latencies(engine, first, rng)
    finally:
        await engine.dispose()
    return {"check": checks, "latency": latency_tables(timed)}


def lead_events(number: int, rng: random.Random) -> list[tuple[str, tuple[bytes, bytes, list[tuple[str, bytes]]]]]:
    """One lead's events as intake, scoring and routing publish them: captured, scored, and for MQLs routed."""
    lead_id, now = str(uuid.uuid4()), utc_now()
    campaign, source, medium = rng.choices(CAMPAIGNS, cum_weights=CAMPAIGN_CUM)[0]
    captured = LeadCapturedV1(
        lead_id=lead_id, email=f"lead{number}@bench.example", country=rng.choice(COUNTRIES),
        company_size=rng.choice(SIZES), industry=rng.choice(INDUSTRIES), seniority=rng.choice(SENIORITIES),
        interests=tuple(rng.sample(INTERESTS, 2)), utm_source=source, utm_medium=medium, utm_campaign=campaign,
        form_id=rng.choice(FORMS), captured_at=now,
    )  # fmt: skip
    score = rng.randint(0, 100)
    qualified = score >= 60
    scored = LeadScoredV1(lead_id=lead_id, score=score, verdict="qualified" if qualified else "nurture",
                          model_version="bench", contributions=(), scored_at=now, grade="B2")  # fmt: skip
    events = [(captured.TOPIC, captured.to_event(source="/baton/bench").to_kafka()),
              (scored.TOPIC, scored.to_event(source="/baton/bench").to_kafka())]  # fmt: skip
    if qualified:
        rep, team = rng.choice(REPS)
        routed = LeadRoutedV1(lead_id=lead_id, assignment_id=str(uuid.uuid4()), kind="assigned", rep_id=rep,
                              team=team, reason="bench", score=score, routed_at=now)  # fmt: skip
        events.append((routed.TOPIC, routed.to_event(source="/baton/bench").to_kafka()))
    return events


async def produce_backlog(bootstrap: str) -> dict[TopicPartition, int]:
    """EVENT_LEADS leads' events on their topics; returns each partition's end offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=True)
    await producer.start()
    rng, futures = random.Random(SEED + 2), []
    try:
        for number in range(EVENT_LEADS):
            for topic, (key, value, headers) in lead_events(number, rng):
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        ends: dict[TopicPartition, int] = {}
        for future in futures:
            record = await future
            partition = TopicPartition(record.topic, record.partition)
            ends[partition] = max(ends.get(partition, 0), record.offset + 1)
    finally:
        await producer.stop()
    return ends


async def catch_up(bootstrap: str, ends: dict[TopicPartition, int], started: float) -> dict[str, Any]:
    """Poll the group's committed offsets until they reach the ends; events/s from the first commit to the last."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    total, samples = sum(ends.values()), []
    deadline = time.monotonic() + 1800
    try:
        while time.monotonic() < deadline:
            try:
                committed = await admin.list_consumer_group_offsets("baton-feedback", partitions=list(ends))
            except KafkaError:  # no coordinator yet: the group has not joined
                committed = {}
            done = sum(max(0, committed[tp].offset) for tp in ends if tp in committed)
            samples.append((time.monotonic(), done))
            if done >= total:
                break
            await asyncio.sleep(0.5)  # poll
    finally:
        await admin.close()
    first = next(((at, done) for at, done in samples if done > 0), samples[-1])
    last_at, last_done = samples[-1]
    span = last_at - first[0]
    return {"events": total, "committed": last_done, "caught_up": last_done >= total,
            "events_per_second": round((last_done - first[1]) / span, 1) if span > 0 else None,
            "seconds_first_commit_to_caught_up": round(span, 1),
            "seconds_process_start_to_caught_up": round(last_at - started, 1)}  # fmt: skip


def consumer_phase(postgres: PostgresServer, run_dir: Path) -> dict[str, Any]:
    """The real feedback process against a backlog on a throwaway Kafka."""
    kafka = KafkaBroker.start(run_dir, use_given=False)
    database_url = postgres.create_database("baton_bench_feedback")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "BATON_ADMIN_KEY": ADMIN_KEY,
           "BATON_FEEDBACK_DATABASE_URL": database_url, "BATON_FEEDBACK_PORT": str(free_port()),
           "BATON_FEEDBACK_LOG_LEVEL": "WARNING"}  # fmt: skip
    try:
        asyncio.run(ensure_topics(kafka.bootstrap_servers, list(ALL_TOPICS), partitions=3, timeout_seconds=30))
        ends = asyncio.run(produce_backlog(kafka.bootstrap_servers))
        with (run_dir / "feedback.log").open("ab") as log:
            started = time.monotonic()
            feedback = subprocess.Popen([sys.executable, "-m", "services.feedback"], cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)  # fmt: skip
        try:
            result = asyncio.run(catch_up(kafka.bootstrap_servers, ends, started))
        finally:
            feedback.terminate()
            feedback.wait(timeout=30)
        result["leads"] = EVENT_LEADS
        result.update(asyncio.run(consumer_outcome(database_url)))
    finally:
        kafka.stop()
    return result


async def consumer_outcome(url: str) -> dict[str, Any]:
    """Cards and the captured total the consumer left behind (every lead should be there once)."""
    connection = await asyncpg.connect(raw_dsn(url))
    try:
        cards = await connection.fetchval("SELECT count(*) FROM feedback.lead_cards")
        captured = await connection.fetchval("SELECT sum(captured) FROM feedback.report_cells WHERE dimension = 'all'")
    finally:
        await connection.close()
    return {"cards": cards, "captured_in_cells": int(captured or 0)}


def main() -> None:
    """Load, check, time, then the consumer; print and save."""
    run_dir = ROOT / "var" / "bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    postgres = PostgresServer.start(use_given=False)
    try:
        url = postgres.create_database("baton_bench_reports")
        print(f"loading {LEADS:,} leads ...", flush=True)
        loaded = asyncio.run(load(url))
        result: dict[str, Any] = {"load": loaded}
        result.update(asyncio.run(reports_phase(url, date.fromisoformat(loaded["first_day"]))))
        result["consumer"] = consumer_phase(postgres, run_dir)
    finally:
        postgres.stop()
    report(result)


def report(result: dict[str, Any]) -> None:
    """Print the table and save the JSON."""
    load_, consumer = result["load"], result["consumer"]
    print(f"\nloaded {load_['leads']:,} leads -> {load_['cells']:,} report cells in {load_['seconds']} s "
          f"(COPY {load_['copy_seconds']} s, vacuum analyze {load_['vacuum_analyze_seconds']} s); "
          f"sizes {load_['sizes']}")  # fmt: skip
    for item in result["check"]:
        verdict = "MATCH" if item["match"] else "MISMATCH"
        print(f"check {item['dimension']:>12} {item['from']}..{item['to']}: {item['groups']} groups, "
              f"{item['leads']:,} leads, full scan {item['scan_ms']} ms -> {verdict}")  # fmt: skip
    print(f"\n{'latency (ms)':<28}{'n':>6}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
    for table, rows in result["latency"].items():
        for name, row in rows.items():
            label = f"{table.split('_ms')[0]} {name}"
            print(f"{label:<28}{row['n']:>6}{row['p50']:>8}{row['p95']:>8}{row['p99']:>8}{row['max']:>8}")
    for kind in ("cells_ms", "report_ms"):
        p95 = result["latency"][kind]["overall"]["p95"]
        print(f"target p95 < 50 ms, {kind.split('_')[0]}: {'met' if p95 < 50 else 'MISSED'} ({p95} ms)")
    print(f"\nfeedback consumer: {consumer['events_per_second']} events/s "
          f"({consumer['committed']}/{consumer['events']} events of {consumer['leads']} leads, "
          f"{consumer['seconds_first_commit_to_caught_up']} s from the first commit, "
          f"{consumer['seconds_process_start_to_caught_up']} s from process start); "
          f"cards {consumer['cards']}, captured in cells {consumer['captured_in_cells']}")  # fmt: skip
    reports = ROOT / "var" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
