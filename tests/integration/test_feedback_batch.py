"""Feedback's run-by-run path on PostgreSQL, where cards, steps and report cells are written from column arrays,
stores exactly what applying each event one by one does on SQLite, where each is a row of an executemany."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feedback import store
from shared.db import make_engine, migrate
from shared.sessions import make_sessions
from shared.uow import UnitOfWork
from tests.unit.test_feedback_batch import Databases, check_run_by_run_equals_one_by_one


@pytest.fixture
async def databases(database_url: str, tmp_path: Path) -> AsyncIterator[Databases]:
    """The one-by-one database on SQLite, the run-by-run one a fresh PostgreSQL schema; closed after the test."""
    engines: list[AsyncEngine] = []

    async def open_database(name: str) -> UnitOfWork:
        schema = f"feedback_{uuid.uuid4().hex[:8]}"
        url = f"sqlite+aiosqlite:///{tmp_path / name}.db" if name == "one_by_one" else database_url
        engines.append(make_engine(url, schema=schema))
        await migrate(engines[-1], store.MIGRATIONS, schema=schema)
        return UnitOfWork(make_sessions(engines[-1]), store.metadata, source="/baton/feedback")

    yield open_database
    for engine in engines:
        await engine.dispose()


@pytest.mark.parametrize(("seed", "fetch_size"), [(3, 40), (8, 250)])
async def test_a_batch_applied_run_by_run_on_postgresql_equals_its_events_applied_one_by_one_on_sqlite(
    databases: Databases, seed: int, fetch_size: int
) -> None:
    await check_run_by_run_equals_one_by_one(databases, seed, fetch_size, same_database_kind=False)
