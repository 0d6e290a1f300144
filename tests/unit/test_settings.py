"""Settings: per-service env prefixes, shared broker and admin key, and where each service's data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.feedback.settings import Settings as FeedbackSettings
from services.lead_intake.settings import Settings as LeadIntakeSettings
from services.routing.settings import Settings as RoutingSettings
from services.scoring.settings import Settings as ScoringSettings
from shared.settings import ServiceSettings

SERVICE_SETTINGS: list[type[ServiceSettings]] = [
    LeadIntakeSettings,
    ScoringSettings,
    RoutingSettings,
    FeedbackSettings,
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("BATON_") or name.upper() in {
            "DATABASE_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
            "ADMIN_KEY",
            "DATA_DIR",
        }:
            monkeypatch.delenv(name)


def test_explicit_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://shared/baton")
    settings = RoutingSettings(database_url="postgresql+asyncpg://own/routing")
    assert settings.resolved_database_url() == "postgresql+asyncpg://own/routing"


def test_service_database_url_from_its_prefixed_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://shared/baton")
    monkeypatch.setenv("BATON_ROUTING_DATABASE_URL", "postgresql+asyncpg://own/routing")
    assert RoutingSettings().resolved_database_url() == "postgresql+asyncpg://own/routing"
    assert ScoringSettings().resolved_database_url() == "postgresql+asyncpg://shared/baton"


def test_shared_database_url_is_used_when_the_service_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://shared/baton")
    assert RoutingSettings().resolved_database_url() == "postgresql+asyncpg://shared/baton"


@pytest.mark.parametrize("settings_type", SERVICE_SETTINGS)
def test_without_any_url_each_service_gets_its_own_sqlite_file(
    settings_type: type[ServiceSettings], tmp_path: Path
) -> None:
    settings = settings_type(data_dir=tmp_path)
    url = settings.resolved_database_url()
    assert url == f"sqlite+aiosqlite:///{tmp_path / (settings.service_name + '.db')}"


def test_data_dir_comes_from_baton_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BATON_DATA_DIR", str(tmp_path))
    assert ScoringSettings().resolved_database_url() == f"sqlite+aiosqlite:///{tmp_path / 'scoring.db'}"


def test_schema_defaults_to_the_service_name() -> None:
    assert [settings_type().resolved_database_schema() for settings_type in SERVICE_SETTINGS] == [
        "lead_intake",
        "scoring",
        "routing",
        "feedback",
    ]
    assert FeedbackSettings(database_schema="journeys").resolved_database_schema() == "journeys"


def test_each_service_has_its_own_default_port() -> None:
    assert [settings_type().port for settings_type in SERVICE_SETTINGS] == [8001, 8002, 8003, 8004]


def test_only_feedback_lets_the_broker_gather_larger_batches() -> None:
    # Scoring and routing are on the speed-to-lead path: the broker answers their fetches as soon as data arrives.
    waits = {
        settings_type().service_name: settings_type().consumer_fetch_max_wait_ms for settings_type in SERVICE_SETTINGS
    }
    assert waits == {"lead_intake": 500, "scoring": 500, "routing": 500, "feedback": 500}
    assert [settings_type().consumer_fetch_min_bytes for settings_type in SERVICE_SETTINGS] == [1, 1, 1, 1024 * 1024]


def test_prefixed_variables_configure_only_their_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_ROUTING_PORT", "9103")
    monkeypatch.setenv("BATON_ROUTING_CONSUMER_MAX_ATTEMPTS", "5")
    routing = RoutingSettings()
    assert (routing.port, routing.consumer_max_attempts) == (9103, 5)
    assert (ScoringSettings().port, ScoringSettings().consumer_max_attempts) == (8002, 3)


def test_broker_and_admin_key_are_shared_by_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("BATON_ADMIN_KEY", "k3y")
    for settings_type in SERVICE_SETTINGS:
        settings = settings_type()
        assert settings.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
        assert settings.admin_key is not None
        assert settings.admin_key.get_secret_value() == "k3y"


def test_admin_key_is_kept_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_ADMIN_KEY", "k3y")
    assert "k3y" not in repr(RoutingSettings())


def test_admin_key_is_unset_by_default() -> None:
    assert RoutingSettings().admin_key is None


def test_fields_can_be_given_by_name() -> None:
    settings = RoutingSettings(kafka_bootstrap_servers="b:1", admin_key="k", data_dir=Path("/srv/baton"))
    assert (settings.kafka_bootstrap_servers, settings.data_dir) == ("b:1", Path("/srv/baton"))


def test_generic_unprefixed_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_KEY", "someone-elses-key")
    monkeypatch.setenv("DATA_DIR", "/someone/elses/dir")
    settings = RoutingSettings()
    assert settings.admin_key is None
    assert settings.data_dir == Path("var")
