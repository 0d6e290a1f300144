"""Settings of lead_intake (env prefix BATON_LEAD_INTAKE_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """lead_intake's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_LEAD_INTAKE_", populate_by_name=True, extra="ignore")

    service_name: str = "lead_intake"
    port: int = 8001
    # Per replica: each process keeps its own buckets.
    rate_limit_per_ip_per_minute: int = 60
    rate_limit_per_form_key_per_minute: int = 1200
    rate_limit_per_server_key_per_minute: int = 12000
