"""Open-loop load on an HTTP endpoint, and the ledger of every lead from its 202 to its first routing decision."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.topics import LEADS_CAPTURED, LEADS_ROUTED, LEADS_SCORED
from speed.http import HttpError, RawHttpClient

COUNTRIES = ("US", "DE", "JP", "GB", "FR", "BR", "IN", "CA", "AU", "ES", "NL", "SE")
TITLES = ("VP Sales", "Head of Marketing", "CTO", "Marketing Manager", "Founder", "Sales Director", "Analyst")
SIZES = ("1-10", "11-50", "51-200", "201-1000", "1001-5000", "5001+")
INDUSTRIES = ("software", "retail", "manufacturing", "finance", "healthcare", "education")
SOURCES = (("google", "cpc"), ("linkedin", "paid_social"), ("newsletter", "email"), ("partner", "referral"))
FIRST_NAMES = ("Ana", "Ben", "Chidi", "Dana", "Emil", "Fumiko", "Gita", "Hugo", "Ines", "Jon")
REQUEST_TIMEOUT_SECONDS = 10.0


def lead_fields(number: int, run: str) -> dict[str, Any]:
    """A realistic web-form lead; the email is unique per run and number, the company one of a few thousand."""
    company = number * 7919 % 4001
    source, medium = SOURCES[number % len(SOURCES)]
    first = FIRST_NAMES[number % len(FIRST_NAMES)]
    return {
        "email": f"{first.lower()}.{run}.{number}@firm{company}.example.com",
        "first_name": first,
        "last_name": f"Bench{number % 997}",
        "company": f"Firm {company}",
        "company_size": SIZES[number % len(SIZES)],
        "industry": INDUSTRIES[number % len(INDUSTRIES)],
        "job_title": TITLES[number % len(TITLES)],
        "country": COUNTRIES[number % len(COUNTRIES)],
        "utm_source": source,
        "utm_medium": medium,
        "utm_campaign": f"q{number % 4 + 1}-launch",
        "landing_page": "https://www.example.com/pricing",
        "consent_marketing": number % 3 != 0,
    }


@dataclass
class Ledger:
    """Every lead of the run: when its 202 arrived, when its first decision was seen, which phase sent it."""

    acked_at: dict[str, float] = field(default_factory=dict)
    routed_at: dict[str, float] = field(default_factory=dict)
    phase_of: dict[str, str] = field(default_factory=dict)
    assigned_ids: dict[str, set[str]] = field(default_factory=dict)
    acked: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)
    # Per lead and pipeline topic, its first event's (committed, published) wall times in ms: the event's time and
    # its record's timestamp (set by the relay's producer).
    stages: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    def acknowledge(self, lead_id: str, phase: str, at: float) -> None:
        """A 202 for `lead_id`."""
        self.acked_at[lead_id] = at
        self.phase_of[lead_id] = phase
        self.acked[phase] += 1
        if lead_id in self.routed_at:  # the routed event overtook the HTTP answer
            self.routed[phase] += 1

    def decision(self, lead_id: str, kind: str, assignment_id: str, at: float) -> None:
        """A record on leads.routed; only a lead's first assigned/unassigned counts for speed to lead."""
        if kind == "assigned":
            self.assigned_ids.setdefault(lead_id, set()).add(assignment_id)
        if kind not in ("assigned", "unassigned") or lead_id in self.routed_at:
            return
        self.routed_at[lead_id] = at
        phase = self.phase_of.get(lead_id)
        if phase is not None:
            self.routed[phase] += 1

    def stage(self, lead_id: str, topic: str, committed_ms: float, published_ms: float) -> None:
        """An event of `lead_id` on a pipeline topic; only the first per topic counts."""
        self.stages.setdefault(lead_id, {}).setdefault(topic, (committed_ms, published_ms))

    def stages_ms(self, phase: str) -> dict[str, list[float]]:
        """Where speed to lead went for the routed leads of `phase`: each step's milliseconds, per lead."""
        return stage_durations([self.stages.get(lead, {}) for lead in self.leads_of(phase)])

    def backlog(self, phase: str) -> int:
        """Leads of `phase` acknowledged but not yet seen routed."""
        return self.acked[phase] - self.routed[phase]

    def leads_of(self, phase: str) -> list[str]:
        """The routed leads of `phase`."""
        return [lead for lead, of in self.phase_of.items() if of == phase and lead in self.routed_at]

    def pending(self) -> int:
        """Leads of every phase acknowledged but not yet seen routed."""
        return sum(self.acked.values()) - sum(self.routed.values())

    def speeds_ms(self, phase: str) -> list[float]:
        """Speed to lead of each routed lead of `phase`, in milliseconds."""
        return [
            (self.routed_at[lead] - acked) * 1000
            for lead, acked in self.acked_at.items()
            if self.phase_of[lead] == phase and lead in self.routed_at
        ]

    def duplicates(self, phase: str | None = None) -> int:
        """Leads with more than one distinct `assigned` decision."""
        return sum(
            1
            for lead, ids in self.assigned_ids.items()
            if len(ids) > 1 and (phase is None or self.phase_of.get(lead) == phase)
        )


# The steps between a lead's capture and its routing decision on Kafka, as (name, from, to): the times are a topic's
# event committed ("c") or published ("p"), from the event's time and its record's timestamp.
STAGES = (
    ("intake relay", (LEADS_CAPTURED, "c"), (LEADS_CAPTURED, "p")),
    ("scoring", (LEADS_CAPTURED, "p"), (LEADS_SCORED, "c")),
    ("scoring relay", (LEADS_SCORED, "c"), (LEADS_SCORED, "p")),
    ("routing", (LEADS_SCORED, "p"), (LEADS_ROUTED, "c")),
    ("routing relay", (LEADS_ROUTED, "c"), (LEADS_ROUTED, "p")),
)


def stage_durations(leads: list[dict[str, tuple[float, float]]]) -> dict[str, list[float]]:
    """Each step's milliseconds over the leads seen on all three topics. A consumer step runs from the record's
    publication to the commit of the event it caused (the wait in Kafka, the fetch and the transaction); a relay
    step from that commit to the publication."""
    durations: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    for seen in leads:
        if not all(topic in seen for topic in (LEADS_CAPTURED, LEADS_SCORED, LEADS_ROUTED)):
            continue
        for name, (start_topic, start), (end_topic, end) in STAGES:
            began = seen[start_topic][0 if start == "c" else 1]
            ended = seen[end_topic][0 if end == "c" else 1]
            durations[name].append(ended - began)
    return durations


@dataclass
class PostStats:
    """What the client saw for one phase of load."""

    rate: float
    sent: int = 0
    accepted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    unanswered: int = 0
    # Arrivals while every connection was busy: dropped at once (counted as errors), because queueing them in
    # the client's queue would grow without bound and the client would end up measuring itself.
    shed: int = 0
    response_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_because: str | None = None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self.sent - self.accepted - sum(self.statuses.values()) - self.unanswered - self.shed

    @property
    def error_share(self) -> float:
        """Non-202s and unanswered requests as a share of those sent."""
        return (sum(self.statuses.values()) + self.unanswered + self.shed) / self.sent if self.sent else 0.0


class OpenLoop:
    """Posts request n at start + n / rate as its own task, whatever happened to the others (no coordinated
    omission: response time counts from the scheduled send)."""

    def __init__(self, client: RawHttpClient, path: str, headers: dict[str, str], *, connections: int) -> None:
        self._client = client
        self._connections = connections
        self._path = path
        self._headers = {**headers, "Content-Type": "application/json"}

    async def run(
        self,
        *,
        rate: float,
        seconds: float,
        body: Callable[[int], bytes],
        on_accept: Callable[[str, float], None],
        should_stop: Callable[[PostStats, float], str | None] | None = None,
    ) -> PostStats:
        """Send rate x seconds requests on schedule; returns once every one is answered or timed out."""
        stats = PostStats(rate=rate)
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for number in range(int(rate * seconds)):
            scheduled = started + number / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pace: the open-loop arrival schedule
            if should_stop is not None and number % max(1, int(rate)) == 0:
                stats.stopped_because = should_stop(stats, time.monotonic() - started)
                if stats.stopped_because:
                    break
            stats.sent += 1
            if stats.in_flight > self._connections:
                stats.shed += 1
                continue
            task = asyncio.create_task(self._post(body(number), scheduled, stats, on_accept))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        stats.seconds = time.monotonic() - started
        return stats

    async def _post(
        self, content: bytes, scheduled: float, stats: PostStats, on_accept: Callable[[str, float], None]
    ) -> None:
        try:
            status, answer = await self._client.post(self._path, content, self._headers)
        except HttpError:
            stats.unanswered += 1
            return
        answered = time.monotonic()
        stats.response_ms.append((answered - scheduled) * 1000)
        if status != 202:
            stats.statuses[status] += 1
            return
        stats.accepted += 1
        on_accept(orjson.loads(answer)["lead_id"], answered)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99 and the maximum, rounded to 0.1; None when there is nothing to rank."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(share: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]

    return {"p50": round(rank(0.5), 1), "p95": round(rank(0.95), 1), "p99": round(rank(0.99), 1),
            "max": round(ordered[-1], 1)}  # fmt: skip
