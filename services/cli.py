"""The `baton` command line for operators: one entry point composing every service's commands."""

from __future__ import annotations

import argparse
import asyncio
import os

from services.lead_intake.cli import add_commands as add_lead_intake_commands
from shared.dlq import replay_dead_letters


def _replay(args: argparse.Namespace) -> None:
    count = asyncio.run(replay_dead_letters(args.bootstrap_servers, args.topic, event_ids=args.event_id))
    print(f"replayed {count} dead letter(s) from {args.topic}")


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
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
