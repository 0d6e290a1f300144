"""`baton leads import` on real PostgreSQL: 100,000 rows streamed in, and a re-run that creates nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import store
from services.lead_intake.importer import import_csv_file
from services.lead_intake.settings import Settings
from shared.db import make_engine
from shared.tables import OUTBOX

ROWS = 100_000
HEADER = "email,first_name,last_name,company,job_title,seniority,company_size,country,phone,interests,Source List\n"


def _write_leads(path: Path, count: int) -> None:
    """A CSV such as a CRM exports: one distinct lead per row, companies shared, a column Baton does not model."""
    with path.open("w", encoding="utf-8") as file:
        file.write(HEADER)
        for n in range(count):
            company = n % 997
            file.write(
                f"lead{n}@company{company}.example,First{n},Last{n},Company {company},Engineer,senior,"
                f'{company * 5 + 1},DE,+49 30 {1_000_000 + n},"ai;crm",list-{n % 7}\n'
            )


@pytest.fixture
def settings(database_url: str) -> Settings:
    """lead_intake's settings on a schema no other test uses."""
    return Settings(database_url=database_url, database_schema=f"t_{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine to count what the import stored (the import brings its own)."""
    engine = make_engine(settings.resolved_database_url(), schema=settings.resolved_database_schema())
    yield engine
    await engine.dispose()


async def _count(engine: AsyncEngine, table_name: str) -> int:
    table = store.metadata.tables[table_name]
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def test_a_hundred_thousand_rows_import_once(settings: Settings, engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    _write_leads(path, ROWS)

    started = time.monotonic()
    first = await import_csv_file(settings, path)
    print(f"\nimported {ROWS} rows into PostgreSQL in {time.monotonic() - started:.1f} s")

    assert (first.rows, first.captured, first.rejected) == (ROWS, ROWS, 0)
    assert await _count(engine, "leads") == ROWS
    events = await _count(engine, OUTBOX)
    assert events == ROWS
    assert not (tmp_path / "leads.csv.errors.csv").exists()

    started = time.monotonic()
    again = await import_csv_file(settings, path)
    print(f"re-imported them in {time.monotonic() - started:.1f} s")

    assert (again.captured, again.merged, again.unchanged) == (0, 0, ROWS)
    assert await _count(engine, "leads") == ROWS
    assert await _count(engine, OUTBOX) == events
