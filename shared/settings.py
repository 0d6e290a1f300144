"""Settings shared by every service; each service subclasses with its own env prefix and port."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    log_level: str = "INFO"
    failpoints: str = ""
    # Published outbox rows are kept this long (they are only needed until the broker has them).
    outbox_retention_hours: float = Field(72.0, gt=0)
    # Consumed event ids are kept this long to absorb redeliveries: longer than the broker keeps its log.
    inbox_retention_days: float = Field(14.0, gt=0)

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
