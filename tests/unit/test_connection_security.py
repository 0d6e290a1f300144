"""Broker and database connection security: where the settings come from, what the clients are given, no leaks."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from services.routing.settings import Settings as RoutingSettings
from services.scoring.settings import Settings as ScoringSettings
from shared.db import PostgresTls, make_engine
from shared.kafka import PLAINTEXT, KafkaSecurity, broker_reachable, client_options
from shared.settings import SHARED_CONNECTION_FIELDS

PASSWORD = "pw-that-must-never-show-7f3a"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports must not leak into these tests."""
    shared = {name.upper() for name in SHARED_CONNECTION_FIELDS}
    for name in list(os.environ):
        if name.upper().startswith("BATON_") or name.upper() in shared:
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA and a client certificate with its key, made by openssl (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    ca, _ = _self_signed(folder, "test-ca")
    cert, key = _self_signed(folder, "client")
    return {"ca": ca, "cert": cert, "key": key}


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def sasl(mechanism: str = "SCRAM-SHA-512", protocol: str = "SASL_PLAINTEXT") -> KafkaSecurity:
    return KafkaSecurity.from_settings(
        RoutingSettings(
            kafka_security_protocol=protocol,
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="baton",
            kafka_sasl_password=SecretStr(PASSWORD),
        )
    )


# --- settings: shared, per service, from files ---


def test_plaintext_is_the_default() -> None:
    assert KafkaSecurity.from_settings(RoutingSettings()) == PLAINTEXT
    assert client_options(PLAINTEXT) == {"security_protocol": "PLAINTEXT"}


def test_unprefixed_variables_configure_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "baton")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", "/etc/kafka/ca.pem")
    monkeypatch.setenv("DATABASE_SSLMODE", "verify-full")
    for settings in (RoutingSettings(), ScoringSettings()):
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
        assert settings.kafka_sasl_password is not None
        assert settings.kafka_sasl_password.get_secret_value() == PASSWORD
        assert settings.kafka_ssl_cafile == Path("/etc/kafka/ca.pem")
        assert settings.database_sslmode == "verify-full"


def test_a_service_prefixed_variable_overrides_the_shared_one_for_that_service_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "baton")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("BATON_ROUTING_KAFKA_SASL_USERNAME", "routing")
    monkeypatch.setenv("BATON_ROUTING_DATABASE_SSLMODE", "require")
    assert RoutingSettings().kafka_sasl_username == "routing"
    assert RoutingSettings().database_sslmode == "require"
    assert ScoringSettings().kafka_sasl_username == "baton"
    assert ScoringSettings().database_sslmode is None


def test_only_connection_fields_are_read_unprefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("SERVICE_NAME", "impostor")
    assert RoutingSettings().port == 8003
    assert RoutingSettings().service_name == "routing"


def test_the_password_can_come_from_a_secrets_dir_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kafka_sasl_password").write_text(PASSWORD + "\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "baton")
    settings = RoutingSettings(_secrets_dir=tmp_path)
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == PASSWORD


def test_a_service_secret_file_overrides_the_shared_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kafka_sasl_password").write_text("shared-password")
    (tmp_path / "baton_routing_kafka_sasl_password").write_text(PASSWORD)
    routing = RoutingSettings(_secrets_dir=tmp_path)
    scoring = ScoringSettings(_secrets_dir=tmp_path)
    assert routing.kafka_sasl_password is not None and scoring.kafka_sasl_password is not None
    assert routing.kafka_sasl_password.get_secret_value() == PASSWORD
    assert scoring.kafka_sasl_password.get_secret_value() == "shared-password"


def test_sasl_without_credentials_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="KAFKA_SASL_PASSWORD"):
        RoutingSettings()


def test_unknown_protocols_and_mechanisms_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAIN")
    with pytest.raises(ValidationError):
        RoutingSettings()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ValidationError):
        RoutingSettings()


# --- what aiokafka clients are given ---


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_options(mechanism: str) -> None:
    assert client_options(sasl(mechanism)) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "baton",
        "sasl_plain_password": PASSWORD,
    }


def test_ssl_options_verify_the_broker_against_the_ca_file(certificates: dict[str, Path]) -> None:
    security = KafkaSecurity(protocol="SSL", ssl_cafile=certificates["ca"])
    options = client_options(security)
    assert set(options) == {"security_protocol", "ssl_context"}
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]


def test_ssl_options_carry_a_client_certificate_for_mutual_tls(certificates: dict[str, Path]) -> None:
    security = KafkaSecurity(
        protocol="SSL",
        ssl_cafile=certificates["ca"],
        ssl_certfile=certificates["cert"],
        ssl_keyfile=certificates["key"],
    )
    assert isinstance(client_options(security)["ssl_context"], ssl.SSLContext)
    with pytest.raises(FileNotFoundError):
        client_options(KafkaSecurity(protocol="SSL", ssl_certfile=Path("/nonexistent/client.pem")))


def test_sasl_ssl_options_have_both() -> None:
    options = client_options(sasl(protocol="SASL_SSL"))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_password"] == PASSWORD
    assert isinstance(options["ssl_context"], ssl.SSLContext)


# --- secrets stay out of reprs and logs ---


def test_the_password_is_in_no_repr_str_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "baton")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    settings = RoutingSettings()
    security = KafkaSecurity.from_settings(settings)
    shown = [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json(), repr(security)]
    assert all(PASSWORD not in text for text in shown)


async def test_readiness_failures_log_nothing_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert not await broker_reachable(f"127.0.0.1:{closed_port}", timeout_seconds=1, security=sasl())
    assert PASSWORD not in caplog.text


# --- PostgreSQL TLS ---


def test_database_tls_is_left_to_the_url_when_unset() -> None:
    assert PostgresTls.from_settings(RoutingSettings()) is None


def test_database_sslmode_disable_turns_tls_off() -> None:
    assert PostgresTls(mode="disable").asyncpg_ssl() is False


def test_database_sslmode_require_encrypts_without_verifying() -> None:
    context = PostgresTls(mode="require").asyncpg_ssl()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


def test_database_sslmode_verify_ca_checks_the_certificate_not_the_host(certificates: dict[str, Path]) -> None:
    context = PostgresTls(mode="verify-ca", root_cert=certificates["ca"]).asyncpg_ssl()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_database_sslmode_verify_full_checks_both(
    certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("DATABASE_SSLROOTCERT", str(certificates["ca"]))
    monkeypatch.setenv("DATABASE_SSLCERT", str(certificates["cert"]))
    monkeypatch.setenv("DATABASE_SSLKEY", str(certificates["key"]))
    tls = PostgresTls.from_settings(RoutingSettings())
    assert tls == PostgresTls(
        mode="verify-full", root_cert=certificates["ca"], cert=certificates["cert"], key=certificates["key"]
    )
    context = tls.asyncpg_ssl()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sqlite_ignores_database_tls(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", schema="x", tls=PostgresTls(mode="require"))
    assert engine.dialect.name == "sqlite"
