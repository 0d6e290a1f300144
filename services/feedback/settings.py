"""Settings of feedback (env prefix BATON_FEEDBACK_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """feedback's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_FEEDBACK_", populate_by_name=True, extra="ignore")

    service_name: str = "feedback"
    port: int = 8004
