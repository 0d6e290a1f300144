"""Nothing lost, nothing routed twice: scenarios against real processes, a real broker and a real database.

`make test` runs a fast subset; `make test-faults` (BATON_FAULTS=full) runs every scenario three times with
SIGKILL and once with SIGTERM, 2,000 leads each.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.conftest import VERDICTS
from tests.faults.runner import run_scenario
from tests.faults.scenarios import SCENARIOS

FULL = os.environ.get("BATON_FAULTS") == "full"
LEADS = int(os.environ.get("BATON_FAULT_LEADS", "2000" if FULL else "300"))
RATE = float(os.environ.get("BATON_FAULT_RATE", "100"))
RUN_SIGNALS = (signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM)

if FULL:
    CASES = [(name, run, sig) for name in SCENARIOS for run, sig in enumerate(RUN_SIGNALS, start=1)]
else:
    CASES = [
        ("routing_killed_before_offset_commit", 1, signal.SIGKILL),
        ("broker_down_30s", 1, signal.SIGKILL),
        ("poison_and_dlq_replay", 1, signal.SIGKILL),
    ]


@pytest.mark.parametrize(
    ("scenario", "run", "kill_signal"), CASES, ids=[f"{name}-{run}-{sig.name}" for name, run, sig in CASES]
)
async def test_every_acknowledged_lead_is_routed_exactly_once(
    fault_cluster: FaultCluster, scenario: str, run: int, kill_signal: signal.Signals
) -> None:
    verdict = await run_scenario(
        fault_cluster, SCENARIOS[scenario], run=run, kill_signal=kill_signal, leads=LEADS, rate=RATE
    )
    VERDICTS.append(verdict)

    assert verdict.passed, verdict.explained()
