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
    # Feedback runs at the same CPU priority as the speed-to-lead path (default 0). At niceness 10 it yielded the
    # cores whenever the machine was busy, so under sustained load its lag grew first: `make bench` held 470 and
    # 500 leads/s with it against 650 and 700 at niceness 0 (alternating runs on one day), while p99 at 500
    # leads/s was 219 and 485 ms against 309 and 248: no gain beyond the runs' spread. A marketer's reports must
    # keep up with the leads; an operator who wants the cores for routing first sets BATON_FEEDBACK_CPU_NICENESS.
