"""Runs one scenario: steady load, the fault, quiescence, then the checker's verdict."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from tests.faults.checker import Verdict, judge, wait_until_routed
from tests.faults.cluster import FaultCluster, FaultContext
from tests.faults.diagnosis import where_leads_stopped
from tests.faults.load import LeadStream, LoadReport
from tests.faults.scenarios import Scenario

CATCH_UP_TIMEOUT = 240.0


async def run_scenario(
    cluster: FaultCluster, scenario: Scenario, *, run: int, kill_signal: signal.Signals, leads: int, rate: float
) -> Verdict:
    """Drive `leads` leads at `rate` per second through the fault and judge the history."""
    await cluster.ensure_healthy()
    stream = LeadStream(
        cluster.stack["lead_intake"].url,
        cluster.stack.headers,
        tag=f"{scenario.name}-{run}-{uuid.uuid4().hex[:6]}",
        count=leads,
        rate=rate,
    )
    ctx = FaultContext(cluster, stream, kill_signal)
    await scenario.prepare(ctx)
    load = asyncio.create_task(stream.run())
    try:
        await scenario.inject(ctx)
    except BaseException:
        load.cancel()
        raise
    report = await load
    load_ended = time.monotonic()
    acknowledged = set(report.acknowledged) | ctx.extra_leads
    await wait_until_routed(cluster.engine, acknowledged, timeout=CATCH_UP_TIMEOUT)
    catch_up = max(0.0, time.monotonic() - max(ctx.cleared_at, load_ended))
    notes = {**ctx.notes, "load": _load_notes(report.statuses, report.unanswered, report.hung)}
    failures = list(ctx.failures) + _load_failures(report, stream.count)
    if failures:
        notes["failures"] = failures
    verdict = await judge(
        scenario=scenario.name,
        run=run,
        signal=kill_signal.name,
        bootstrap_servers=cluster.kafka.bootstrap_servers,
        engine=cluster.engine,
        acknowledged=acknowledged,
        catch_up_seconds=catch_up,
        notes=notes,
    )
    if verdict.lost:
        verdict.notes["diagnosis"] = await where_leads_stopped(cluster, acknowledged)
    return verdict


def _load_notes(statuses: dict[int, int], unanswered: int, hung: int) -> dict[str, object]:
    return {
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "unanswered": unanswered,
        "hung": hung,
    }


def _load_failures(report: LoadReport, count: int) -> list[str]:
    failures = []
    unexpected = {code: n for code, n in report.statuses.items() if code not in (202, 503)}
    if unexpected:
        failures.append(f"unexpected answers {unexpected}")
    if report.hung:
        failures.append(f"{report.hung} calls hung past the client timeout")
    if report.bad_503:
        failures.append(f"{report.bad_503} 503 answers without problem+json and Retry-After")
    if report.given_up or len(report.acknowledged) < count:
        failures.append(f"only {len(report.acknowledged)} of {count} leads were ever acknowledged")
    return failures
