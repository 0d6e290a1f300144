"""Settings of routing (env prefix BATON_ROUTING_)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """routing's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_ROUTING_", populate_by_name=True, extra="ignore")

    service_name: str = "routing"
    port: int = 8003
    # How often SLA deadlines and waiting queues are checked.
    timer_interval_seconds: float = Field(1.0, gt=0, le=300)
    # Webhook deliveries: how often the dispatcher looks for due deliveries, and for how long it retries.
    webhook_poll_seconds: float = Field(0.5, gt=0, le=60)
    webhook_retry_hours: float = Field(24.0, gt=0, le=24 * 7)
