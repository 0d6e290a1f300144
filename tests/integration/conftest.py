"""A fresh PostgreSQL database per test, migrated with a small test schema (effects + outbox + inbox)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import Column, MetaData, String, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import Migration, create_tables, make_engine, migrate
from shared.sessions import make_sessions
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.uow import UnitOfWork
from tests.support.infra import PostgresServer

metadata = MetaData()
add_messaging_tables(metadata)
effects = Table("effects", metadata, Column("event_id", String(64), primary_key=True), Column("note", String(200)))
MIGRATIONS = (Migration(1, "test tables", create_tables(metadata, "effects", OUTBOX, INBOX)),)


@pytest.fixture(scope="session")
def database_url(postgres: PostgresServer) -> str:
    """One database for the integration tests; each test gets its own schema."""
    return postgres.create_database("baton_it")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh schema, migrated."""
    async with migrated_engine(database_url, MIGRATIONS) as engine:
        yield engine


@contextlib.asynccontextmanager
async def migrated_engine(database_url: str, migrations: Sequence[Migration]) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh schema with `migrations` applied; disposed of at the end."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = make_engine(database_url, schema=schema)
    try:
        await migrate(engine, migrations, schema=schema)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def uow(engine: AsyncEngine) -> UnitOfWork:
    """A unit of work over the fresh schema."""
    return UnitOfWork(make_sessions(engine), metadata, source="/baton/test")


def fresh_topic(name: str) -> str:
    """A topic name no other test uses."""
    return f"test.{name}.{uuid.uuid4().hex[:8]}"
