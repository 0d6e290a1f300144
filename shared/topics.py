"""Kafka topic names: the one place they are spelled."""

from typing import Final

LEADS_CAPTURED: Final = "leads.captured"
LEADS_ACTIVITY: Final = "leads.activity"
LEADS_SCORED: Final = "leads.scored"
LEADS_ROUTED: Final = "leads.routed"
LEADS_OUTCOMES: Final = "leads.outcomes"
# A lead's personal data was erased on request: every service removes its copies.
LEADS_ERASED: Final = "leads.erased"

ALL_TOPICS: Final = (LEADS_CAPTURED, LEADS_ACTIVITY, LEADS_SCORED, LEADS_ROUTED, LEADS_OUTCOMES, LEADS_ERASED)

# Written by sales tools, not by Baton: outcomes as plain JSON (the body of POST /v1/outcomes), CloudEvents optional.
SALES_OUTCOMES: Final = "sales.outcomes"
INBOUND_TOPICS: Final = (SALES_OUTCOMES,)


def dead_letter_topic(topic: str) -> str:
    """Name of the topic that holds the dead letters of `topic`."""
    return f"{topic}.dlq"
