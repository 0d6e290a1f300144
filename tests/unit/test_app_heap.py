"""A served service keeps its start-up heap out of the garbage collector's full passes (they stalled it 100 to 250 ms
under load) and spaces the collector's passes out; an app a test runs in process leaves the test's collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scoring.app import create_app
from services.scoring.settings import Settings
from tests.support.inprocess import offline_settings


class StartUpObject:
    """Anything made before the service starts serving."""


@pytest.fixture
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def test_a_served_app_freezes_what_start_up_made(tmp_path: Path, unfrozen: None) -> None:
    app = create_app(offline_settings(Settings, tmp_path))
    app.state.freeze_heap_when_started = True  # what shared.serve.serve sets
    made_at_start_up = StartUpObject()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
        assert made_at_start_up not in gc.get_objects(generation=2)  # permanent: not scanned any more


async def test_a_served_app_lets_a_fetched_batch_live_without_a_collector_pass(tmp_path: Path, unfrozen: None) -> None:
    app = create_app(offline_settings(Settings, tmp_path))
    app.state.freeze_heap_when_started = True
    async with app.router.lifespan_context(app):
        passes: list[int] = []

        def count_passes(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                passes.append(info["generation"])

        gc.collect()
        gc.callbacks.append(count_passes)
        try:
            batch = [{"lead_id": f"lead-{number}", "fields": [number]} for number in range(5_000)]  # 10,000 objects
        finally:
            gc.callbacks.remove(count_passes)
        assert len(batch) == 5_000
        assert passes == []  # Python's default would have run 14


async def test_an_app_run_in_process_leaves_the_collector_alone(tmp_path: Path, unfrozen: None) -> None:
    thresholds = gc.get_threshold()
    app = create_app(offline_settings(Settings, tmp_path))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == thresholds
