"""One running stack (four service processes) shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infra import KafkaBroker, PostgresServer
from tests.support.stack import Stack, running_stack

REPS = [
    {"rep_id": "rep-a", "name": "Aiko", "email": "aiko@example.com"},
    {"rep_id": "rep-b", "name": "Ben", "email": "ben@example.com"},
    {"rep_id": "rep-c", "name": "Chidi", "email": "chidi@example.com"},
]


@pytest.fixture(scope="session")
def stack(kafka: KafkaBroker, postgres: PostgresServer, run_dir: Path) -> Iterator[Stack]:
    """The four services on the real broker and a fresh PostgreSQL database, with three reps."""
    with running_stack(
        reps=REPS,
        bootstrap_servers=kafka.bootstrap_servers,
        database_url=postgres.create_database("baton_e2e"),
        log_dir=run_dir / "e2e-logs",
    ) as running:
        yield running
