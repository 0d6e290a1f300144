"""The fuzzed stack (four service processes on the session's broker and a fresh database) and the totals table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fuzz.harness import REPORTS, Budget, FuzzReport
from tests.support.infra import ROOT, KafkaBroker, PostgresServer
from tests.support.stack import Stack, running_stack

# Known reps, so list and lookup operations answer with real rows the response schemas must describe.
REPS = [{"rep_id": f"rep-{letter}", "name": f"Rep {letter}", "email": f"{letter}@reps.example"} for letter in "ab"]


@pytest.fixture(scope="package")
def fuzz_stack(kafka: KafkaBroker, postgres: PostgresServer, run_dir: Path) -> Iterator[Stack]:
    """Its own database: fuzzing writes junk (reps, policies, models) no other test should see."""
    with running_stack(
        reps=REPS,
        bootstrap_servers=kafka.bootstrap_servers,
        database_url=postgres.create_database("baton_fuzz"),
        log_dir=run_dir / "fuzz-logs",
        group_suffix="fuzz",
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def fuzz_budget() -> Budget:
    """The run's size and seed (BATON_FUZZ_EXAMPLES / BATON_FUZZ_REQUESTS / BATON_FUZZ_SEED)."""
    return Budget.from_env()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print requests and findings per service and run; save them as JSON under var/reports/."""
    if not REPORTS:
        return
    terminalreporter.section("fuzzing (schemathesis)")
    header = f"{'service':<12} {'run':<10} {'ops':>4} {'examples':>8} {'requests':>8} {'findings':>8}  statuses"
    terminalreporter.write_line(header)
    for report in REPORTS:
        statuses = " ".join(f"{status}:{count}" for status, count in sorted(report.statuses.items()))
        terminalreporter.write_line(
            f"{report.service:<12} {report.run:<10} {report.operations:>4} {report.examples:>8} "
            f"{report.requests:>8} {len(report.findings):>8}  {statuses}"
        )
    keyed = [report for report in REPORTS if report.run == "admin key"]
    terminalreporter.write_line(
        f"seed {REPORTS[0].seed}; requests with the admin key: {sum(r.requests for r in keyed)}"
    )
    reports = ROOT / "var" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"fuzz-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps([_as_json(report) for report in REPORTS], indent=2))
    terminalreporter.write_line(f"saved {path.relative_to(ROOT)}")


def _as_json(report: FuzzReport) -> dict[str, object]:
    return {
        "service": report.service,
        "run": report.run,
        "seed": report.seed,
        "operations": report.operations,
        "examples_per_operation_and_mode": report.examples,
        "requests": report.requests,
        "statuses": {str(status): count for status, count in sorted(report.statuses.items())},
        "findings": [asdict(finding) | {"count": report.repeats[key]} for key, finding in report.findings.items()],
    }
