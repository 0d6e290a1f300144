"""Unit-test fixtures: a throwaway SQLite database per test, never a server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh SQLite file, tuned as the services tune theirs."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'unit.db'}", schema="unit")
    yield engine
    await engine.dispose()
