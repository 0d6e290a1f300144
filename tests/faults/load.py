"""A client that posts leads at a steady rate and remembers every 202, retrying unanswered posts with the same data."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

UNANSWERED = (httpx.TransportError,)
MAX_IN_FLIGHT = 32


@dataclass
class LoadReport:
    """What the client saw: every acknowledged lead, and every way a post was not acknowledged."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # lead id -> email
    statuses: Counter[int] = field(default_factory=Counter)
    unanswered: int = 0
    hung: int = 0
    bad_503: int = 0
    given_up: int = 0
    acknowledged_at: list[float] = field(default_factory=list)
    unavailable_at: list[float] = field(default_factory=list)

    def acknowledged_between(self, start: float, end: float) -> int:
        """How many 202s arrived in [start, end] (monotonic clock)."""
        return sum(1 for moment in self.acknowledged_at if start <= moment <= end)

    def unavailable_between(self, start: float, end: float) -> int:
        """How many well-formed 503s arrived in [start, end]."""
        return sum(1 for moment in self.unavailable_at if start <= moment <= end)


class LeadStream:
    """Open-loop load: lead n is posted at start + n / rate, whatever happened to the others."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        tag: str,
        count: int,
        rate: float,
        call_timeout: float = 10.0,
        give_up_after: float = 240.0,
    ) -> None:
        self._url = url
        self._headers = headers
        self._tag = tag
        self.count = count
        self._rate = rate
        self._call_timeout = call_timeout
        self._give_up_after = give_up_after
        self.report = LoadReport()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(self) -> LoadReport:
        """Post every lead; returns once each is acknowledged or given up."""
        # A bounded number in flight: httpx's pool spends quadratic time on a long queue of waiting requests,
        # which would turn the client, not the system under test, into the bottleneck.
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
        async with httpx.AsyncClient(base_url=self._url, headers=self._headers, limits=limits) as client:
            started = time.monotonic()
            tasks = []
            for number in range(self.count):
                delay = started + number / self._rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # poll: the arrival schedule of an open-loop load
                tasks.append(asyncio.create_task(self._deliver(client, number)))
            await asyncio.gather(*tasks)
        return self.report

    def lead(self, number: int) -> dict[str, str]:
        """The form data of lead `number`: the same on every retry."""
        return {
            "email": f"f{number}.{self._tag}@firm{number % 13}.example",
            "first_name": "Mei",
            "last_name": f"Lin{number}",
            "company": f"Firm {number % 13}",
            "job_title": "VP Marketing" if number % 3 else "Engineer",
            "country": "SG",
            "utm_source": "faults",
            "utm_campaign": self._tag,
        }

    async def _deliver(self, client: httpx.AsyncClient, number: int) -> None:
        deadline = time.monotonic() + self._give_up_after
        while time.monotonic() < deadline:
            async with self._in_flight:
                pause = await self._attempt(client, number)
            if pause is None:
                return
            await asyncio.sleep(pause)  # poll: a client's back-off before retrying the same lead
        self.report.given_up += 1

    async def _attempt(self, client: httpx.AsyncClient, number: int) -> float | None:
        """One post; None when the lead is settled, else how long to wait before retrying."""
        started = time.monotonic()
        try:
            response = await client.post("/v1/leads", json=self.lead(number), timeout=self._call_timeout)
        except httpx.TimeoutException:
            self.report.hung += 1
            return 0.5
        except UNANSWERED:
            self.report.unanswered += 1
            return 0.2
        self.report.statuses[response.status_code] += 1
        if response.status_code == 202:
            self.report.acknowledged[response.json()["lead_id"]] = self.lead(number)["email"]
            self.report.acknowledged_at.append(time.monotonic())
            return None
        if response.status_code == 503:
            return self._unavailable(response, started)
        return None  # any other answer is a bug the checker reports through `statuses`

    def _unavailable(self, response: httpx.Response, started: float) -> float:
        retry_after = response.headers.get("retry-after", "")
        if response.headers.get("content-type", "").startswith("application/problem+json") and retry_after.isdigit():
            self.report.unavailable_at.append(time.monotonic())
        else:
            self.report.bad_503 += 1
        return min(float(retry_after or 1), 1.0)
