"""Served processes take their CPU niceness from their settings: by default every service stays at the niceness it
was started with; a service given a higher one (feedback, off the speed-to-lead path, if an operator wants the
cores for routing first) is served at it. Each case runs in a child process (niceness only ever goes up within a
process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.feedback.settings import Settings as FeedbackSettings
from services.lead_intake.settings import Settings as LeadIntakeSettings
from services.routing.settings import Settings as RoutingSettings
from services.scoring.settings import Settings as ScoringSettings

ROOT = Path(__file__).resolve().parents[2]

# Serves the named service's app as `python -m services.<name>` does, with uvicorn replaced by a report of the
# niceness the process would serve at.
SERVE_AND_REPORT = """
import importlib, os, sys
import uvicorn
uvicorn.run = lambda *args, **kwargs: print(os.nice(0))
name = sys.argv[1]
settings = importlib.import_module(f"services.{name}.settings").Settings()
app = importlib.import_module(f"services.{name}.app").create_app(settings)
from shared.serve import serve
serve(app, settings)
"""


def served_niceness(service: str, **env: str) -> int:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("BATON_")}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, service], cwd=ROOT, env={**clean, "BATON_LOG_LEVEL": "ERROR", **env},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


def test_every_service_is_served_at_the_niceness_it_was_started_with_by_default() -> None:
    started_at = os.nice(0)
    for service in ("lead_intake", "scoring", "routing", "feedback"):
        assert served_niceness(service) == started_at
    assert (FeedbackSettings().cpu_niceness, LeadIntakeSettings().cpu_niceness, ScoringSettings().cpu_niceness,
            RoutingSettings().cpu_niceness) == (0, 0, 0, 0)  # fmt: skip


def test_the_niceness_is_a_setting_of_each_service() -> None:
    started_at = os.nice(0)
    assert served_niceness("feedback", BATON_FEEDBACK_CPU_NICENESS="10") == max(started_at, 10)
    assert served_niceness("routing", BATON_ROUTING_CPU_NICENESS="5") == max(started_at, 5)


def test_a_niceness_outside_0_to_19_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_niceness"):
        RoutingSettings(cpu_niceness=20)
    with pytest.raises(ValueError, match="cpu_niceness"):
        RoutingSettings(cpu_niceness=-1)
