"""`baton keys …` and `baton leads import …`: lead_intake's commands, working on its database directly."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from services.lead_intake import store
from services.lead_intake.access import create_key, list_keys, revoke_key
from services.lead_intake.importer import CsvRefused, import_csv_file
from services.lead_intake.settings import Settings
from shared.runtime import standalone_unit_of_work


def add_commands(commands: Any) -> None:
    """Register lead_intake's subcommands on the `baton` parser."""
    keys = commands.add_parser("keys", help="API keys of lead_intake").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--kind",
        choices=("form", "server"),
        required=True,
        help="form: public, submit only, bound to origins and forms; server: write and import",
    )
    create.add_argument("--origin", action="append", default=[], help="allowed page origin (repeatable)")
    create.add_argument("--form", action="append", default=[], help="allowed form id (repeatable)")
    create.set_defaults(run=_create_key)
    keys.add_parser("list", help="list keys (never their secrets)").set_defaults(run=_list_keys)
    revoke = keys.add_parser("revoke", help="revoke a key (effective within 30 s everywhere)")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_revoke_key)
    leads = commands.add_parser("leads", help="leads of lead_intake").add_subparsers(dest="action", required=True)
    importing = leads.add_parser("import", help="import a CSV of leads through validation and dedupe")
    importing.add_argument("path", help="CSV file with a header row (email required)")
    importing.add_argument("--errors", default=None, help="where to write rejected rows (default: <path>.errors.csv)")
    importing.add_argument("--batch-size", type=int, default=500)
    importing.set_defaults(run=_import_leads)


def _session(settings: Settings) -> Any:
    return standalone_unit_of_work(settings, metadata=store.metadata, migrations=store.MIGRATIONS)


async def _create(args: argparse.Namespace) -> None:
    async with _session(Settings()) as uow:
        issued = await create_key(uow, name=args.name, kind=args.kind, origins=args.origin, forms=args.form)
    print(f"key_id: {issued.key_id}\nkind:   {issued.kind}\nkey:    {issued.secret}\n(shown once: store it now)")


def _create_key(args: argparse.Namespace) -> None:
    asyncio.run(_create(args))


async def _list(_: argparse.Namespace) -> None:
    async with _session(Settings()) as uow, uow.read() as session:
        for key in await list_keys(session):
            state = "revoked" if key["revoked_at"] else "active"
            print(
                f"{key['key_id']}  {key['kind']:<6}  {state:<7}  {key['name']}  origins={key['allowed_origins']} "
                f"forms={key['allowed_forms']}"
            )


def _list_keys(args: argparse.Namespace) -> None:
    asyncio.run(_list(args))


async def _revoke(args: argparse.Namespace) -> None:
    async with _session(Settings()) as uow:
        revoked = await revoke_key(uow, key_id=args.key_id)
    if not revoked:
        raise SystemExit(f"no active key {args.key_id}")
    print(f"revoked {args.key_id}")


def _revoke_key(args: argparse.Namespace) -> None:
    asyncio.run(_revoke(args))


def _import_leads(args: argparse.Namespace) -> None:
    try:
        asyncio.run(import_csv_file(Settings(), args.path, errors_path=args.errors, batch_size=args.batch_size))
    except (CsvRefused, OSError) as exc:
        raise SystemExit(f"{args.path}: {exc}") from None
