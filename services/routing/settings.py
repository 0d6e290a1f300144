"""Settings of routing (env prefix BATON_ROUTING_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """routing's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_ROUTING_", populate_by_name=True, extra="ignore")

    service_name: str = "routing"
    port: int = 8003
