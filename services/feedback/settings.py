"""Settings of feedback (env prefix BATON_FEEDBACK_)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """feedback's settings."""

    model_config = SettingsConfigDict(env_prefix="BATON_FEEDBACK_", populate_by_name=True, extra="ignore")

    service_name: str = "feedback"
    port: int = 8004
    # Feedback is off the speed-to-lead path: a fetch waits up to 500 ms for 1 MB, so a batch updates each
    # report cell once for many events instead of once per handful (at 300 leads/s, 250 ms for 256 KB left its lag
    # growing, and PostgreSQL used 51 % of a core instead of 45).
    consumer_fetch_max_wait_ms: int = 500
    consumer_fetch_min_bytes: int = 1024 * 1024
    # Feedback yields the cores to the speed-to-lead path (shared.serve.lower_cpu_priority). At 500 leads/s, every
    # process sharing two cores, it used a sixth of their CPU; at niceness 10 (four alternating pairs in the
    # profiling driver) speed to lead's p99 was 464 to 734 ms against 650 to 1,230, while feedback's lag grew for
    # the peak. Its reports trail a peak by seconds; the leads do not wait for them.
    cpu_niceness: int = 10
