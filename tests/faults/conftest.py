"""The fault cluster (own broker, own PostgreSQL, four service processes) and the summary report."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.faults.checker import Verdict
from tests.faults.cluster import FaultCluster
from tests.support.infra import ROOT, KafkaBroker, PostgresServer
from tests.support.stack import Stack

VERDICTS: list[Verdict] = []
REPS = [{"rep_id": f"rep-{letter}", "name": f"Rep {letter}", "email": f"{letter}@reps.example"} for letter in "abcd"]


@pytest.fixture(scope="module")
async def fault_cluster(run_dir: Path) -> AsyncIterator[FaultCluster]:
    """A cluster the scenarios may break: never the session's shared broker or database."""
    kafka = KafkaBroker.start(run_dir, use_given=False)
    postgres = PostgresServer.start(use_given=False)
    database_url = postgres.create_database("baton_faults")
    stack = Stack.create(
        bootstrap_servers=kafka.bootstrap_servers, database_url=database_url, log_dir=run_dir / "fault-logs"
    )
    engine = create_async_engine(database_url, pool_pre_ping=True)
    cluster = FaultCluster(kafka=kafka, postgres=postgres, stack=stack, engine=engine)
    try:
        await cluster.ensure_healthy()
        async with httpx.AsyncClient(headers=stack.headers) as client:
            for rep in REPS:
                await client.post(stack["routing"].url + "/v1/reps", json=rep)
        yield cluster
    finally:
        for replica in cluster.replicas:
            replica.stop()
        stack.stop()
        await engine.dispose()
        kafka.stop()
        postgres.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the scenario table and save it as JSON under var/reports/."""
    if not VERDICTS:
        return
    columns = (
        "scenario",
        "run",
        "signal",
        "acknowledged",
        "routed",
        "lost",
        "duplicates",
        "order_violations",
        "catch_up_seconds",
    )
    widths = [max(len(column), *(len(str(getattr(v, column))) for v in VERDICTS)) for column in columns]
    terminalreporter.section("fault scenarios")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + "  result")
    for verdict in VERDICTS:
        cells = [str(getattr(verdict, column)).ljust(w) for column, w in zip(columns, widths, strict=True)]
        terminalreporter.write_line("  ".join(cells) + ("  pass" if verdict.passed else "  FAIL"))
    reports = ROOT / "var" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"faults-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps([asdict(v) | {"passed": v.passed} for v in VERDICTS], indent=2, default=str))
    terminalreporter.write_line(f"saved {path.relative_to(ROOT)}")
