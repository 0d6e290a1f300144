"""The `baton` command line for operators: one entry point composing every service's commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from services import migrate_cli
from services.lead_intake.cli import add_commands as add_lead_intake_commands
from services.routing.reps_import import InvalidRoster, import_reps_file
from services.routing.settings import Settings as RoutingSettings
from shared.dlq import replay_dead_letters
from shared.kafka import KafkaSecurity
from shared.problems import ProblemError
from shared.settings import ServiceSettings


def _replay(args: argparse.Namespace) -> None:
    # The broker's TLS/SASL settings come from the shared environment (KAFKA_SECURITY_PROTOCOL, ...), as for services.
    security = KafkaSecurity.from_settings(ServiceSettings())
    count = asyncio.run(
        replay_dead_letters(args.bootstrap_servers, args.topic, event_ids=args.event_id, security=security)
    )
    print(f"replayed {count} dead letter(s) from {args.topic}")


def _import_reps(args: argparse.Namespace) -> None:
    try:
        text = Path(args.path).read_text(encoding="utf-8")
        counts = asyncio.run(import_reps_file(RoutingSettings(), text))
    except InvalidRoster as exc:
        for error in exc.errors:
            print(f"{args.path}: row {error.row}, {error.field}: {error.message}", file=sys.stderr)
        print(f"{args.path}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ProblemError, OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{args.path}: {exc}") from None
    print(f"{args.path}: {counts['created']} created, {counts['updated']} updated")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `baton`."""
    parser = argparse.ArgumentParser(prog="baton", description="Operate Baton.")
    commands = parser.add_subparsers(dest="command", required=True)
    dlq = commands.add_parser("dlq", help="dead letters").add_subparsers(dest="action", required=True)
    replay = dlq.add_parser("replay", help="put dead letters back on their original topic (idempotent)")
    replay.add_argument("topic", help="the dead-letter topic, e.g. leads.scored.dlq")
    replay.add_argument("--event-id", action="append", default=[], help="only this ce_id (repeatable)")
    replay.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    replay.set_defaults(run=_replay)
    add_lead_intake_commands(commands)
    reps = commands.add_parser("reps", help="reps of routing").add_subparsers(dest="action", required=True)
    importing = reps.add_parser("import", help="create or replace reps from a CSV (all rows or none)")
    importing.add_argument("path", help="CSV with a header row: rep_id,name,email,team,... (name, email required)")
    importing.set_defaults(run=_import_reps)
    migrate_cli.add_command(commands)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
