"""Versioned migrations on SQLite: each applied once, in version order, and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import store as routing_store
from shared.db import Migration, make_engine, migrate

SCHEMA = "unit"


def _sql(version: int, statement: str) -> Migration:
    def _apply(connection: Connection) -> None:
        connection.execute(text(statement))

    return Migration(version, f"step {version}", _apply)


def _broken(version: int) -> Migration:
    def _apply(connection: Connection) -> None:
        raise RuntimeError("migration bug")

    return Migration(version, f"step {version}", _apply)


async def _history(engine: AsyncEngine) -> list[tuple[int, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT version, name FROM schema_migrations ORDER BY version"))
        return [(row.version, row.name) for row in rows]


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_pending_migrations_are_applied_and_recorded(engine: AsyncEngine) -> None:
    applied = await migrate(engine, routing_store.MIGRATIONS, schema=SCHEMA)
    assert applied == [1, 2, 3, 4, 5, 6, 7]
    assert [name for _, name in await _history(engine)][:2] == ["reps, assignments, rotations, outbox and inbox",
                                                              "default pool"]  # fmt: skip
    assert {"reps", "assignments", "rotations", "outbox", "inbox", "teams", "accounts"} <= await _tables(engine)


async def test_a_database_of_the_first_schema_is_upgraded_keeping_its_rows(engine: AsyncEngine) -> None:
    """Migration 3 adds rep profiles and routing state to tables created before they existed."""
    old_schema = [
        "CREATE TABLE reps (rep_id VARCHAR(64) PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(320) NOT NULL,"
        " active BOOLEAN NOT NULL, created_at VARCHAR(40) NOT NULL)",
        "CREATE TABLE assignments (assignment_id VARCHAR(36) PRIMARY KEY, lead_id VARCHAR(36) NOT NULL UNIQUE,"
        " kind VARCHAR(20) NOT NULL, rep_id VARCHAR(64), score INTEGER NOT NULL, reason VARCHAR(1000) NOT NULL,"
        " details JSON NOT NULL, decided_at VARCHAR(40) NOT NULL)",
        "CREATE TABLE rotations (pool VARCHAR(64) PRIMARY KEY, last_rep_id VARCHAR(64))",
        "INSERT INTO rotations VALUES ('default', NULL)",
        "INSERT INTO reps VALUES ('rep-a', 'Aiko', 'aiko@example.com', 1, '2026-01-01T00:00:00+00:00')",
        "INSERT INTO assignments VALUES ('a-1', 'lead-1', 'assigned', 'rep-a', 70, 'r', '{}',"
        " '2026-01-01T00:00:00+00:00')",
    ]
    await migrate(engine, [_sql(1, "; ".join(old_schema[:1])), *[_sql(n, sql) for n, sql in [
        (2, old_schema[1])]]], schema=SCHEMA)  # fmt: skip
    async with engine.begin() as connection:
        for statement in old_schema[2:]:
            await connection.execute(text(statement))
    assert await migrate(engine, routing_store.MIGRATIONS, schema=SCHEMA) == [3, 4, 5, 6, 7]
    async with engine.connect() as connection:
        rep = (await connection.execute(select(routing_store.reps))).mappings().one()
        lead = (await connection.execute(select(routing_store.assignments))).mappings().one()
        load = (await connection.execute(select(routing_store.rep_loads))).mappings().one()
    assert (rep["name"], rep["weight"], rep["timezone"]) == ("Aiko", 1, "UTC")
    assert (lead["lead_id"], lead["status"]) == ("lead-1", "assigned")
    assert (load["rep_id"], load["open_leads"]) == ("rep-a", 1)  # the lead it already carries


async def test_second_run_applies_nothing(engine: AsyncEngine) -> None:
    await migrate(engine, routing_store.MIGRATIONS, schema=SCHEMA)
    assert await migrate(engine, routing_store.MIGRATIONS, schema=SCHEMA) == []
    async with engine.connect() as connection:
        pools = (await connection.execute(select(routing_store.rotations.c.pool))).scalars().all()
    assert pools == [routing_store.DEFAULT_POOL]


async def test_migration_added_later_is_applied_alone(engine: AsyncEngine) -> None:
    first = [_sql(1, "CREATE TABLE reps (rep_id TEXT PRIMARY KEY)")]
    await migrate(engine, first, schema=SCHEMA)
    later = [*first, _sql(2, "ALTER TABLE reps ADD COLUMN region TEXT")]
    assert await migrate(engine, later, schema=SCHEMA) == [2]
    assert [version for version, _ in await _history(engine)] == [1, 2]


async def test_migrations_run_in_version_order_whatever_the_list_order(engine: AsyncEngine) -> None:
    out_of_order = [_sql(2, "CREATE INDEX ix_reps_region ON reps (region)"), _sql(1, "CREATE TABLE reps (region TEXT)")]
    assert await migrate(engine, out_of_order, schema=SCHEMA) == [1, 2]


async def test_failed_migration_is_not_recorded_and_is_retried_next_start(engine: AsyncEngine) -> None:
    create = _sql(1, "CREATE TABLE reps (rep_id TEXT PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="migration bug"):
        await migrate(engine, [create, _broken(2), _sql(3, "CREATE TABLE later (id INTEGER)")], schema=SCHEMA)
    assert [version for version, _ in await _history(engine)] == [1]
    assert "later" not in await _tables(engine)
    fixed = [create, _sql(2, "ALTER TABLE reps ADD COLUMN region TEXT"), _sql(3, "CREATE TABLE later (id INTEGER)")]
    assert await migrate(engine, fixed, schema=SCHEMA) == [2, 3]


async def test_sqlite_file_is_created_with_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "svc.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}", schema=SCHEMA)
    try:
        await migrate(engine, [], schema=SCHEMA)
    finally:
        await engine.dispose()
    assert path.exists()
