"""Settings of scoring (env prefix BATON_SCORING_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """scoring's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_SCORING_", populate_by_name=True, extra="ignore")

    service_name: str = "scoring"
    port: int = 8002
    # How often qualified leads are re-scored so that decay can announce the ones going cold.
    cooling_check_seconds: float = 60.0
