"""Outbox and inbox tables, added to each service's own metadata so they live in its own database."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from shared.db import UtcDateTime

OUTBOX = "outbox"
INBOX = "inbox"


def add_messaging_tables(metadata: MetaData) -> None:
    """Declare the outbox (events to publish) and inbox (events already applied) in `metadata`."""
    outbox = Table(
        OUTBOX,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False),
        Column("topic", String(249), nullable=False),
        Column("message_key", LargeBinary, nullable=True),
        Column("value", LargeBinary, nullable=True),
        Column("headers", JSON, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("sent_at", UtcDateTime(), nullable=True),
    )
    Index(
        "ix_outbox_pending",
        outbox.c.id,
        postgresql_where=outbox.c.sent_at.is_(None),
        sqlite_where=outbox.c.sent_at.is_(None),
    )
    Table(
        INBOX,
        metadata,
        Column("event_id", String(64), primary_key=True),
        Column("topic", String(249), nullable=False),
        Column("processed_at", UtcDateTime(), nullable=False),
    )
