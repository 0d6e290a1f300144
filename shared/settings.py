"""Settings shared by every service; each service subclasses with its own env prefix and port."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
DatabaseSslMode = Literal["disable", "require", "verify-ca", "verify-full"]

# Connection security is usually one configuration for every service: these fields are read unprefixed
# (KAFKA_SASL_PASSWORD, DATABASE_SSLMODE — or a secrets-dir file of that name) and a service's own prefixed
# variable (BATON_ROUTING_KAFKA_SASL_PASSWORD) overrides them for that service only.
SHARED_CONNECTION_FIELDS = frozenset(
    {
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "database_sslmode",
        "database_sslrootcert",
        "database_sslcert",
        "database_sslkey",
    }
)


class _Unprefixed(PydanticBaseSettingsSource):
    """Another source restricted to the shared connection fields (it is built without the service's prefix)."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, value in self._inner().items() if name in SHARED_CONNECTION_FIELDS}


class ServiceSettings(BaseSettings):
    """What every Baton service needs: where it listens, its database, the broker and the admin key."""

    # Shared variables (KAFKA_BOOTSTRAP_SERVERS, BATON_ADMIN_KEY, BATON_DATA_DIR) carry no service prefix;
    # populate_by_name lets tests pass every field by its name.
    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", secrets_dir=os.environ.get("BATON_SECRETS_DIR") or None
    )

    service_name: str = "baton"
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    database_schema: str | None = None
    data_dir: Path = Field(Path("var"), validation_alias="BATON_DATA_DIR")
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    admin_key: SecretStr | None = Field(None, validation_alias="BATON_ADMIN_KEY")
    topic_partitions: int = 3
    broker_timeout_seconds: float = 10.0
    consumer_max_attempts: int = 3
    # A consumer fetching nothing this long while its group's records wait replaces its Kafka client (it wedged).
    consumer_stall_seconds: float = Field(30.0, gt=0)
    # How long the broker may hold a fetch to gather `consumer_fetch_min_bytes`: a consumer off the speed-to-lead
    # path (feedback) trades a little freshness for larger batches, i.e. fewer transactions and row updates. With
    # one byte wanted, a fetch is answered as soon as a record arrives: the wait only spaces out the fetches of an
    # idle consumer (each costs the broker CPU), as Kafka's own default of 500 ms does.
    consumer_fetch_max_wait_ms: int = Field(500, ge=0, le=5000)
    consumer_fetch_min_bytes: int = Field(1, ge=1)
    log_level: str = "INFO"
    # The served process's CPU niceness (0 to 19, only ever raised): a service given a higher one yields the cores
    # to the others when the machine is busy, and catches up when it is not (if it can: see feedback's settings).
    cpu_niceness: int = Field(0, ge=0, le=19)
    failpoints: str = ""
    # The service's consumer group; replicas of one deployment share it (default baton-<service>).
    consumer_group: str | None = None
    # Published outbox rows are kept this long (they are only needed until the broker has them).
    outbox_retention_hours: float = Field(72.0, gt=0)
    # Consumed event ids are kept this long to absorb redeliveries: longer than the broker keeps its log.
    inbox_retention_days: float = Field(14.0, gt=0)
    # Broker connection security (see SHARED_CONNECTION_FIELDS for where they are read from).
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # PostgreSQL TLS, as libpq names it; unset keeps whatever the URL says (asyncpg's default is "prefer").
    database_sslmode: DatabaseSslMode | None = None
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, then the unprefixed variables and secret files of the shared connection fields."""
        # The secrets dir the usual source uses: the class's, or a `_secrets_dir` passed at construction.
        secrets_dir = (
            file_secret_settings.secrets_dir
            if isinstance(file_secret_settings, SecretsSettingsSource)
            else settings_cls.model_config.get("secrets_dir")
        )
        shared_env = EnvSettingsSource(settings_cls, env_prefix="")
        shared_secrets = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir, env_prefix="")
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _Unprefixed(shared_env),
            _Unprefixed(shared_secrets),
        )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> ServiceSettings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return self

    def resolved_database_url(self) -> str:
        """This service's own URL, else the shared DATABASE_URL (one schema per service), else a SQLite file."""
        if self.database_url:
            return self.database_url
        shared_url = os.environ.get("DATABASE_URL")
        if shared_url:
            return shared_url
        return f"sqlite+aiosqlite:///{self.data_dir / (self.service_name + '.db')}"

    def resolved_database_schema(self) -> str:
        """PostgreSQL schema holding this service's tables (ignored by SQLite)."""
        return self.database_schema or self.service_name
