"""Session-wide real infrastructure: one Kafka broker and one PostgreSQL server, started only when a test needs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infra import ROOT, KafkaBroker, PostgresServer


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """Where this run keeps broker and database files (git-ignored)."""
    path = ROOT / "var" / "test"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def kafka(run_dir: Path) -> Iterator[KafkaBroker]:
    """The real broker; failing to start it fails the tests, never skips them."""
    broker = KafkaBroker.start(run_dir)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The real PostgreSQL server; failing to start it fails the tests, never skips them."""
    server = PostgresServer.start()
    yield server
    server.stop()
