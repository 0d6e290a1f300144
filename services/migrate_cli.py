"""`baton migrate`: apply each service's pending schema migrations ahead of a rollout (services also do it on
start, serialised by an advisory lock)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from services.feedback import store as feedback_store
from services.feedback.settings import Settings as FeedbackSettings
from services.lead_intake import store as lead_intake_store
from services.lead_intake.settings import Settings as LeadIntakeSettings
from services.routing import store as routing_store
from services.routing.settings import Settings as RoutingSettings
from services.scoring import store as scoring_store
from services.scoring.settings import Settings as ScoringSettings
from shared.db import Migration, make_engine, migrate
from shared.settings import ServiceSettings


def _schemas() -> dict[str, tuple[type[ServiceSettings], Sequence[Migration]]]:
    return {
        "lead_intake": (LeadIntakeSettings, lead_intake_store.MIGRATIONS),
        "scoring": (ScoringSettings, scoring_store.MIGRATIONS),
        "routing": (RoutingSettings, routing_store.MIGRATIONS),
        "feedback": (FeedbackSettings, feedback_store.MIGRATIONS),
    }


SERVICES = ("lead_intake", "scoring", "routing", "feedback")


async def migrate_service(name: str) -> list[int]:
    """Apply `name`'s pending migrations to its configured database; returns the versions applied."""
    settings_class, migrations = _schemas()[name]
    settings = settings_class()
    schema = settings.resolved_database_schema()
    engine = make_engine(settings.resolved_database_url(), schema=schema)
    try:
        return await migrate(engine, migrations, schema=schema)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> None:
    """The command."""
    for name in SERVICES if args.service == "all" else (args.service,):
        applied = asyncio.run(migrate_service(name))
        print(f"{name}: applied {', '.join(map(str, applied)) or 'nothing (up to date)'}")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `baton migrate`."""
    migrating = commands.add_parser("migrate", help="apply pending schema migrations (services also do on start)")
    migrating.add_argument("--service", choices=[*SERVICES, "all"], default="all")
    migrating.set_defaults(run=run)
