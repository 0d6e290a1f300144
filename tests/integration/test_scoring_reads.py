"""Scoring's run read on real PostgreSQL: what it holds about the leads and, in the same round trip, the models in
force, exactly as `models_in_force` reads them on its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring import store
from shared.db import make_engine, migrate
from shared.sessions import make_sessions
from shared.uow import UnitOfWork


@pytest.fixture
async def uow(database_url: str) -> AsyncIterator[UnitOfWork]:
    """A unit of work on a fresh scoring schema, migrated."""
    schema = f"scoring_{uuid.uuid4().hex[:8]}"
    engine: AsyncEngine = make_engine(database_url, schema=schema)
    await migrate(engine, store.MIGRATIONS, schema=schema)
    yield UnitOfWork(make_sessions(engine), store.metadata, source="/baton/scoring")
    await engine.dispose()


@pytest.mark.parametrize("active", [None, 2])
async def test_the_run_read_brings_the_models_in_force_as_read_on_their_own(
    uow: UnitOfWork, active: int | None
) -> None:
    now = datetime.now(UTC)
    async with uow.transaction() as tx:
        await tx.session.execute(
            update(store.learned_state).values(bias=0.1 + 0.2, bias_accumulated=1 / 3, outcomes=7, updated_at=now)
        )
        for version in (1, 2, 3):
            status = "active" if version == active else "retired" if version < 3 else "draft"
            await tx.session.execute(
                store.scoring_models.insert().values(
                    version=version, name=f"v{version}", definition={}, status=status, created_at=now
                )
            )
    async with uow.transaction() as tx:
        known = await store.known_about(tx.session, lead_ids=["lead-1"])
        alone = await store.models_in_force(tx.session)
    assert known.in_force is not None
    assert known.in_force.rules_version == alone.rules_version == active
    for name in ("bias", "bias_accumulated", "outcomes"):
        assert known.in_force.learned[name] == alone.learned[name], name
    assert alone.learned["bias"] == 0.1 + 0.2  # every digit, not a rounded text
