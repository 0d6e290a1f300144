"""Settings of feedback (env prefix BATON_FEEDBACK_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """feedback's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_FEEDBACK_", populate_by_name=True, extra="ignore")

    service_name: str = "feedback"
    port: int = 8004
    # Feedback is off the speed-to-lead path: a fetch waits up to 250 ms for 256 KB, so a batch updates each
    # report cell once for many events instead of once per handful.
    consumer_fetch_max_wait_ms: int = 250
    consumer_fetch_min_bytes: int = 256 * 1024
