"""The phases of `make bench`: fixed rates through the whole pipeline, the search for the maximum sustained rate,
and the maximum req/s of one HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from speed.load import Ledger, OpenLoop, PostStats, lead_fields, percentiles

if TYPE_CHECKING:  # the monitor needs psutil, a bench-only extra; the search runs in unit tests without it
    from speed.monitor import Monitor, StageReader

# Sustained = errors under 1 %; the end-to-end backlog and every consumer group's lag small at the end, not growing.
MAX_ERROR_SHARE = 0.01
BACKLOG_SECONDS = 2.0
# Records a consumer group reads per lead at most (feedback: captured, scored, routed).
RECORDS_PER_LEAD = 3
# A step is given up early once it cannot come back (keeps an overloaded client from measuring itself).
ABANDON_BACKLOG_SECONDS = 6.0
# Before each step of the search, every consumer group's lag at most this many records, waiting up to this long.
CAUGHT_UP_RECORDS = 50
CATCH_UP_SECONDS = 60.0
CLIMB = (100, 200, 300, 500, 700, 1000, 1400, 2000, 2800, 4000)
CLIENT_BOUND_CPU = 85.0
HTTP_CLIMB = (50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000)


def quiet_collector() -> None:
    """Keep what earlier phases left (the ledger's records) out of the collector's full passes: one would stall the
    generator and the subscriber, the clocks of the measurement, for tens of milliseconds."""
    gc.collect()
    gc.freeze()


@dataclass
class Pipeline:
    """The load generator, the ledger the subscriber fills, and the monitor, for one run."""

    load: OpenLoop
    ledger: Ledger
    monitor: Monitor
    run: str
    grace_seconds: float
    drain_seconds: float
    stages: StageReader | None = None  # where speed to lead goes, read after each phase
    _next_number: int = 0

    def _body(self, number: int) -> bytes:
        return orjson.dumps(lead_fields(self._next_number + number, self.run))

    async def phase(
        self, name: str, rate: float, seconds: float, should_stop: Callable[[PostStats, float], str | None] | None
    ) -> dict[str, Any]:
        """Post leads at `rate` for `seconds`, wait until they are routed (or lost), summarise."""
        self.monitor.phase = name
        quiet_collector()
        began_ms = time.time() * 1000
        stats = await self.load.run(
            rate=rate, seconds=seconds, body=self._body, should_stop=should_stop,
            on_accept=lambda lead_id, at: self.ledger.acknowledge(lead_id, name, at),
        )  # fmt: skip
        self._next_number += stats.sent
        backlog_at_end = self.ledger.backlog(name)
        drained = await self._drain(name)
        if self.stages is not None:
            await self.stages.read_since(began_ms - 1000)
        summary = self._summary(name, stats, backlog_at_end, drained)
        print(f"{name}: {stats.accepted}/{stats.sent} 202, speed to lead {summary['speed_to_lead_ms']}", flush=True)
        return summary

    async def backlog_drain(
        self,
        name: str,
        *,
        leads: int,
        enqueue_rate: float,
        paused: list[subprocess.Popen[bytes]],
        first_group: str = "baton-scoring",
    ) -> dict[str, Any]:
        """Post `leads` while the `paused` consumers are stopped, wait until all of them are on Kafka (the lag of
        `first_group`, the first consumer, holds them: intake's relay may still be publishing after the last 202),
        resume the consumers, and time how fast the pipeline routes the backlog: consumer throughput, whatever the
        HTTP side can do."""
        self.monitor.phase = name
        quiet_collector()
        for process in paused:
            process.send_signal(signal.SIGSTOP)
        try:
            stats = await self.load.run(
                rate=enqueue_rate, seconds=leads / enqueue_rate, body=self._body,
                on_accept=lambda lead_id, at: self.ledger.acknowledge(lead_id, name, at),
            )  # fmt: skip
            await self._wait_enqueued(first_group, stats.accepted)
        finally:
            resumed = time.monotonic()
            for process in paused:
                process.send_signal(signal.SIGCONT)
        self._next_number += stats.sent
        self.monitor.phase = f"{name}-routing"
        drained = await self._drain(name)
        last = max((self.ledger.routed_at[lead] for lead in self.ledger.leads_of(name)), default=resumed)
        routed = self.ledger.routed[name]
        rate = routed / (last - resumed) if last > resumed else 0.0
        print(f"{name}: {routed}/{stats.accepted} routed from backlog at {rate:.0f} leads/s", flush=True)
        return {"name": name, "accepted": stats.accepted, "routed": routed, "lost": self.ledger.backlog(name),
                "duplicates": self.ledger.duplicates(name), "seconds": round(last - resumed, 2),
                "leads_per_second": round(rate, 1), "drain_seconds": drained,
                "cpu": self.monitor.cpu_by_phase(f"{name}-routing")}  # fmt: skip

    async def _wait_enqueued(self, group: str, records: int, timeout: float = 30.0) -> None:
        # Until `group` lags by `records` (all posted leads published), or `timeout`.
        if self.monitor.lag is None:
            return
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            with contextlib.suppress(Exception):  # a slow admin call: try again
                if (await self.monitor.lag.sample()).get(group, 0) >= records:
                    return
            await asyncio.sleep(0.1)  # poll

    async def _drain(self, name: str) -> float:
        # Wait for the phase's leads to be routed; give up after `grace_seconds` without progress.
        began = last_progress = time.monotonic()
        backlog = self.ledger.backlog(name)
        while backlog > 0 and time.monotonic() - last_progress < self.grace_seconds:
            if time.monotonic() - began > self.drain_seconds:
                break
            await asyncio.sleep(0.2)  # poll
            if self.ledger.backlog(name) < backlog:
                backlog, last_progress = self.ledger.backlog(name), time.monotonic()
        return round(time.monotonic() - began, 1)

    async def quiesce(self, most_records: int, timeout: float, phase: str = "quiesce") -> float:
        """Wait until every consumer group's lag is at most `most_records` (feedback catching up on a phase) or
        `timeout` passed; returns the seconds waited."""
        began = time.monotonic()
        self.monitor.phase = phase
        while time.monotonic() - began < timeout:
            lags = self.monitor.samples[-1]["lag"] if self.monitor.samples else {}
            if lags and max(lags.values()) <= most_records:
                break
            await asyncio.sleep(0.5)  # poll
        return round(time.monotonic() - began, 1)

    async def settle(self, grace_seconds: float) -> None:
        """Wait until every acknowledged lead is routed, or nothing moved for `grace_seconds`."""
        last_progress, pending = time.monotonic(), self.ledger.pending()
        while pending and time.monotonic() - last_progress < grace_seconds:
            await asyncio.sleep(0.2)  # poll
            if self.ledger.pending() < pending:
                pending, last_progress = self.ledger.pending(), time.monotonic()

    def _summary(self, name: str, stats: PostStats, backlog_at_end: int, drained: float) -> dict[str, Any]:
        samples = [sample for sample in self.monitor.samples if sample["phase"] == name]
        backlogs = [sample["backlog"] for sample in samples]
        groups = sorted({group for sample in samples for group in sample["lag"]})
        lags = {group: [sample["lag"].get(group, 0) for sample in samples] for group in groups}
        return {
            "name": name, "rate": stats.rate, "seconds": round(stats.seconds, 1), "sent": stats.sent,
            "accepted": stats.accepted, "non_202": {str(code): count for code, count in stats.statuses.items()},
            "unanswered": stats.unanswered, "shed": stats.shed, "error_share": round(stats.error_share, 4),
            "routed": self.ledger.routed[name], "lost": self.ledger.backlog(name),
            "duplicates": self.ledger.duplicates(name),
            "speed_to_lead_ms": percentiles(self.ledger.speeds_ms(name)),
            "stages_ms": {stage: percentiles(ms) for stage, ms in self.ledger.stages_ms(name).items()},
            "response_ms": percentiles(stats.response_ms),
            "backlog_at_end": backlog_at_end, "backlog_samples": backlogs, "lag_samples": lags,
            "drain_seconds": drained,
            "stopped_because": stats.stopped_because, "cpu": self.monitor.cpu_by_phase(name),
        }  # fmt: skip

    async def sustain_step(self, rate: float, seconds: float) -> dict[str, Any]:
        """One step of the search: `seconds` at `rate`, judged by the end-to-end backlog, every consumer group's lag
        and intake errors. The step starts once every group has caught up on the one before: a failed step leaves
        feedback tens of thousands of records behind, and the next step, at a lower rate, would be judged on that
        backlog instead of its own rate."""
        name = f"sustain-{rate:.0f}"
        caught_up = await self.quiesce(CAUGHT_UP_RECORDS, CATCH_UP_SECONDS, phase=f"sustain-catch-up-{rate:.0f}")
        summary = await self.phase(name, rate, seconds, self._abandon_check(name, rate))
        summary["sustained"], summary["reason"] = judge(summary, rate)
        summary["catch_up_seconds"] = caught_up
        return summary

    def _abandon_check(self, name: str, rate: float) -> Callable[[PostStats, float], str | None]:
        def check(stats: PostStats, elapsed: float) -> str | None:
            if elapsed < 10:
                return None
            if self.ledger.backlog(name) > ABANDON_BACKLOG_SECONDS * rate:
                return f"backlog over {ABANDON_BACKLOG_SECONDS:.0f} s of arrivals after {elapsed:.0f} s"
            if stats.in_flight > ABANDON_BACKLOG_SECONDS * rate:
                return f"intake {stats.in_flight} requests behind after {elapsed:.0f} s"
            if stats.sent > 500 and stats.error_share > 5 * MAX_ERROR_SHARE:
                return f"{stats.error_share:.1%} intake errors"
            return None

        return check


def judge(summary: dict[str, Any], rate: float) -> tuple[bool, str]:
    """Sustained or not, and why."""
    if summary["stopped_because"]:
        return False, summary["stopped_because"]
    if summary["error_share"] >= MAX_ERROR_SHARE:
        return False, f"{summary['error_share']:.1%} intake errors"
    if summary["backlog_at_end"] > BACKLOG_SECONDS * rate:
        return False, f"backlog {summary['backlog_at_end']} at the end (> {BACKLOG_SECONDS:.0f} s of arrivals)"
    if _growing(summary["backlog_samples"], 0.5 * rate):
        return False, "backlog still growing"
    # Every consumer group must keep up too, feedback included (it reads three records per lead), even though
    # speed to lead does not wait for it: its lag must not grow, and must end small unless it is shrinking.
    for group, lags in summary.get("lag_samples", {}).items():
        if _growing(lags, 0.5 * rate * RECORDS_PER_LEAD):
            return False, f"{group} lag still growing"
        if lags and lags[-1] > BACKLOG_SECONDS * rate * RECORDS_PER_LEAD and lags[-1] >= lags[0]:
            return False, f"{group} lag {lags[-1]} at the end (> {BACKLOG_SECONDS:.0f} s of records)"
    return True, "bounded"


def _growing(samples: list[int], slack: float) -> bool:
    """The last fifth of the samples above the middle fifth by more than `slack`."""
    if len(samples) < 10:
        return False
    middle = samples[len(samples) * 2 // 5 : len(samples) * 3 // 5]
    tail = samples[-max(1, len(samples) // 5) :]
    return sum(tail) / len(tail) > sum(middle) / len(middle) + slack


class SustainSteps(Protocol):
    """What the search needs of the pipeline: one judged step at a rate."""

    async def sustain_step(self, rate: float, seconds: float) -> dict[str, Any]: ...


async def search_max_sustained(
    pipeline: SustainSteps, *, start: float, seconds: float, max_steps: int
) -> tuple[float, list[dict[str, Any]]]:
    """Climb from `start` until a step fails, then bisect between the last pass and the first failure."""
    steps: list[dict[str, Any]] = []
    passed, failed = 0.0, None
    candidates = [start, *(rate for rate in CLIMB if rate > start)]
    for rate in candidates:
        if len(steps) >= max_steps:
            break
        steps.append(await pipeline.sustain_step(rate, seconds))
        if not steps[-1]["sustained"]:
            failed = rate
            break
        passed = rate
    while failed is not None and len(steps) < max_steps and failed - passed > max(25.0, 0.1 * failed):
        rate = round((passed + failed) / 2 / 10) * 10
        steps.append(await pipeline.sustain_step(rate, seconds))
        passed, failed = (rate, failed) if steps[-1]["sustained"] else (passed, rate)
    return passed, steps


def _form_body(tag: str, number: int) -> bytes:
    return orjson.dumps(lead_fields(number, tag))


async def http_max_rps(load: OpenLoop, seconds: float, monitor: Monitor, name: str) -> dict[str, Any]:
    """Climb open-loop rates on one endpoint until under 99 % answered 202 or p99 over 1 s; the last pass wins."""
    steps: list[dict[str, Any]] = []
    best = 0.0
    for rate in HTTP_CLIMB:
        monitor.phase = f"{name}-{rate}"
        tag = f"{name}{rate}"
        stats = await load.run(rate=rate, seconds=seconds, body=functools.partial(_form_body, tag),
                               on_accept=lambda lead_id, at: None)  # fmt: skip
        response = percentiles(stats.response_ms)
        ok = stats.error_share < MAX_ERROR_SHARE and (response["p99"] or 0) < 1000
        steps.append({"rate": rate, "accepted": stats.accepted, "error_share": round(stats.error_share, 4),
                      "achieved": round(stats.accepted / stats.seconds, 1), "response_ms": response, "ok": ok,
                      "cpu": monitor.cpu_by_phase(monitor.phase)})  # fmt: skip
        # The generator shares the machine: past ~one core busy it, not the endpoint, is what the step measured.
        steps[-1]["client_bound"] = steps[-1]["cpu"].get("bench", 0.0) >= CLIENT_BOUND_CPU
        print(f"{name} at {rate}/s: {steps[-1]['achieved']}/s answered 202, {response}", flush=True)
        if not ok:
            break
        best = rate
    return {"max_rps": best, "steps": steps}
