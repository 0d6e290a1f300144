"""The checker: compares what clients were told (202s) with what Kafka and the routing database hold."""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.topics import LEADS_ROUTED, LEADS_SCORED
from tests.support.kafka_reader import read_topic
from tests.support.polling import eventually


@dataclass
class Verdict:
    """One scenario run, judged. Pass = nothing lost, nothing routed twice, nothing routed before it was scored."""

    scenario: str
    run: int
    signal: str
    acknowledged: int
    routed: int
    lost: int
    duplicates: int
    order_violations: int
    catch_up_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """The promise held."""
        return self.lost == 0 and self.duplicates == 0 and self.order_violations == 0 and not self.notes.get("failures")

    def explained(self) -> str:
        """The verdict in full, notes (and any diagnosis) as indented JSON: what a failing run prints."""
        counts = {name: value for name, value in asdict(self).items() if name != "notes"}
        return f"{counts}\n{json.dumps(self.notes, indent=1, default=str)}"


async def wait_until_routed(engine: AsyncEngine, lead_ids: set[str], *, timeout: float) -> float:
    """Poll the routing database until every lead has an assignment; returns the seconds it took."""
    started = time.monotonic()

    async def all_routed() -> bool:
        return await _assigned_count(engine, lead_ids) >= len(lead_ids)

    with contextlib.suppress(AssertionError):  # the checker counts what is missing
        await eventually(all_routed, timeout=timeout, interval=0.25, message="all acknowledged leads routed")
    return time.monotonic() - started


async def _assigned_count(engine: AsyncEngine, lead_ids: set[str]) -> int:
    return len(await _assignments(engine, lead_ids))


async def judge(
    *,
    scenario: str,
    run: int,
    signal: str,
    bootstrap_servers: str,
    engine: AsyncEngine,
    acknowledged: set[str],
    catch_up_seconds: float,
    notes: dict[str, Any],
) -> Verdict:
    """Read leads.routed and leads.scored and the routing database; count lost, duplicated and misordered leads."""
    routed_records = await read_topic(
        bootstrap_servers,
        LEADS_ROUTED,
        until=lambda seen: acknowledged <= {record.key.decode() for record in seen},
        timeout=30,
    )
    scored_records = await read_topic(
        bootstrap_servers,
        LEADS_SCORED,
        until=lambda seen: acknowledged <= {record.key.decode() for record in seen},
        timeout=10,
    )
    decisions = _by_lead(routed_records, acknowledged)
    scored_at = _first_scored_at(scored_records, acknowledged)
    in_database = await _assignments(engine, acknowledged)
    duplicates = sum(1 for ids in decisions.values() if len({a for a, _, kind in ids if kind == "assigned"}) > 1)
    misordered = sum(
        1 for lead, ids in decisions.items() if lead not in scored_at or min(at for _, at, _ in ids) < scored_at[lead]
    )
    mismatched = sum(1 for lead, ids in decisions.items() if {a for a, _, _ in ids} != in_database.get(lead, set()))
    if mismatched:
        notes.setdefault("failures", []).append(f"{mismatched} leads whose Kafka decision differs from the database")
    return Verdict(
        scenario=scenario,
        run=run,
        signal=signal,
        acknowledged=len(acknowledged),
        routed=len(decisions),
        lost=len(acknowledged - set(decisions)),
        duplicates=duplicates,
        order_violations=misordered,
        catch_up_seconds=round(catch_up_seconds, 1),
        notes=notes,
    )


FIRST_DECISIONS = frozenset({"assigned", "unassigned"})


def _by_lead(records: list[ConsumerRecord[Any, Any]], leads: set[str]) -> dict[str, list[tuple[str, datetime, str]]]:
    decisions: dict[str, list[tuple[str, datetime, str]]] = defaultdict(list)
    for record in records:
        lead = record.key.decode()
        if lead not in leads:
            continue
        payload = orjson.loads(record.value)
        # A lead's first owner is announced as `assigned` (or `unassigned` while it waits); later kinds
        # (accepted, sla_breached, reassigned...) follow a decision, they are not a second one.
        if payload["kind"] in FIRST_DECISIONS:
            at = datetime.fromisoformat(payload["routed_at"])
            decisions[lead].append((payload["assignment_id"], at, payload["kind"]))
    return decisions


def _first_scored_at(records: list[ConsumerRecord[Any, Any]], leads: set[str]) -> dict[str, datetime]:
    first: dict[str, datetime] = {}
    for record in records:
        lead = record.key.decode()
        if lead in leads:
            at = datetime.fromisoformat(orjson.loads(record.value)["scored_at"])
            first[lead] = min(first.get(lead, at), at)
    return first


async def _assignments(engine: AsyncEngine, leads: set[str]) -> dict[str, set[str]]:
    """Each lead's first routing decisions as the routing database recorded them (later kinds excluded)."""
    query = text(
        "SELECT lead_id, assignment_id FROM routing.routing_decisions WHERE lead_id IN :leads AND kind IN :kinds"
    ).bindparams(bindparam("leads", expanding=True), bindparam("kinds", expanding=True))
    found: dict[str, set[str]] = defaultdict(set)
    async with engine.connect() as connection:
        rows = await connection.execute(query, {"leads": sorted(leads), "kinds": sorted(FIRST_DECISIONS)})
        for lead, assignment in rows:
            found[lead].add(assignment)
    return found
