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
    assert applied == [1, 2]
    assert await _history(engine) == [(1, "reps, assignments, rotations, outbox and inbox"), (2, "default pool")]
    assert {"reps", "assignments", "rotations", "outbox", "inbox"} <= await _tables(engine)


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
