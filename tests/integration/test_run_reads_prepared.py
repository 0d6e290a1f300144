"""The reads a consumed run starts with, on real PostgreSQL: scoring's `known_about` and routing's `read_run_leads`
(with locks and without) are each one prepared statement whatever the run's size, past a few leads
(shared.db.FEW_VALUES). An IN list was a new statement for every number of leads: prepared anew (a round trip
more) and planned anew, batch after batch, at high rates. A few leads still go as an IN list (one statement per
count, prepared once): an array that small is planned anew at every execution."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import store as routing_store
from services.scoring import store as scoring_store
from shared.db import FEW_VALUES, Migration, make_engine, migrate
from shared.privacy import ERASED_LEADS
from shared.sessions import DbSession

# Past FEW_VALUES (8); a run's first reads, of a few leads, prepare the statements for a few.
SIZES = (9, 10, 11, 13, 20, 40, 100)


async def _engine(database_url: str, prefix: str, migrations: tuple[Migration, ...]) -> AsyncEngine:
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = make_engine(database_url, schema=schema)
    await migrate(engine, migrations, schema=schema)
    return engine


@pytest.fixture
async def scoring_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await _engine(database_url, "scoring", scoring_store.MIGRATIONS)
    yield engine
    await engine.dispose()


@pytest.fixture
async def routing_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await _engine(database_url, "routing", routing_store.MIGRATIONS)
    yield engine
    await engine.dispose()


async def _statements_prepared(session: DbSession) -> int:
    return int(await session.scalar(text("SELECT count(*) FROM pg_prepared_statements")) or 0)


async def _new_statements(session: DbSession, read: Callable[[list[str]], Awaitable[object]]) -> list[int]:
    """How many statements the connection had prepared after reading a run of each size in SIZES."""
    await _statements_prepared(session)  # the count's own statement, prepared first
    for size in range(1, FEW_VALUES + 1):
        await read([f"lead-{number}" for number in range(size)])
    few = await _statements_prepared(session)
    for size in range(1, FEW_VALUES + 1):  # a count seen before: no statement more
        await read([f"lead-{number}" for number in range(size)])
    assert await _statements_prepared(session) == few
    counts = []
    for size in SIZES:
        await read([f"lead-{number}" for number in range(size)])
        counts.append(await _statements_prepared(session))
    return counts


async def test_scoring_reads_a_run_of_any_size_with_one_prepared_statement(scoring_engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with scoring_engine.begin() as connection:
        await connection.execute(insert(scoring_store.touches), [{"lead_id": "lead-4", "kind": "visit", "at": now}])
        await connection.execute(insert(scoring_store.metadata.tables[ERASED_LEADS]),
                                 [{"lead_id": "lead-7", "erased_at": now}])  # fmt: skip
    async with DbSession(scoring_engine) as session:
        found: list[scoring_store.Known] = []

        async def read(lead_ids: list[str]) -> None:
            found.append(await scoring_store.known_about(session, lead_ids=lead_ids))

        counts = await _new_statements(session, read)
    assert counts == [counts[0]] * len(SIZES), counts
    few: list[list[str]] = [[]] * 4 + [["lead-4"]] * 4
    assert [sorted(known.touches) for known in found] == few * 2 + [["lead-4"]] * len(SIZES)
    few = [[]] * 7 + [["lead-7"]]
    assert [sorted(known.erased) for known in found] == few * 2 + [["lead-7"]] * len(SIZES)


@pytest.mark.parametrize("lock", [True, False])
async def test_routing_reads_a_run_of_any_size_with_one_prepared_statement(
    routing_engine: AsyncEngine, lock: bool
) -> None:
    async with routing_engine.begin() as connection:
        await connection.execute(insert(routing_store.rotations), [{"pool": "pool-3", "weights": {"rep-1": 2}}])
    async with DbSession(routing_engine) as session, session.begin():
        found: list[routing_store.RunLeads] = []

        async def read(lead_ids: list[str]) -> None:
            pools = [f"pool-{number}" for number in range(len(lead_ids))]
            domains = [f"{lead_id}.example" for lead_id in lead_ids]
            found.append(
                await routing_store.read_run_leads(session, lead_ids=lead_ids, domains=domains, pools=pools, lock=lock)
            )

        counts = await _new_statements(session, read)
    assert counts == [counts[0]] * len(SIZES), counts
    few: list[dict[str, dict[str, int]]] = [{}] * 3 + [{"pool-3": {"rep-1": 2}}] * 5
    assert [known.rotations for known in found] == few * 2 + [{"pool-3": {"rep-1": 2}}] * len(SIZES)
