"""Stand-ins for the ports unit tests must not reach: the broker, and a service database of their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import Migration, create_tables, migrate
from shared.envelope import CloudEvent
from shared.kafka import OutboundRecord, Publisher
from shared.sessions import make_sessions
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.uow import UnitOfWork

# A manager at a named business: fit 30 (business email 15, manager 10, company named 5), short of 50 on its own.
MANAGER_LEAD: dict[str, Any] = {
    "email": "ada@acme.test",
    "first_name": "Ada",
    "company": "Acme",
    "company_domain": "acme.test",
    "seniority": "manager",
}


class FakePublisher:
    """Keeps what it is asked to publish; it can be told to fail before sending, or after (a lost ack)."""

    def __init__(self) -> None:
        self.published: list[OutboundRecord] = []
        self.outages: list[BaseException] = []
        self.lost_acks = 0
        self.closed = False

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Record `records`, unless an outage is queued; a lost ack records them and raises anyway."""
        if self.outages:
            raise self.outages.pop(0)
        self.published.extend(records)
        if self.lost_acks:
            self.lost_acks -= 1
            raise TimeoutError("broker acknowledgement lost")

    async def close(self) -> None:
        """Nothing to release."""
        self.closed = True


def _conforms(publisher: FakePublisher) -> Publisher:
    return publisher  # mypy proves the fake implements the port


def messaging_schema() -> tuple[MetaData, tuple[Migration, ...]]:
    """A metadata holding only the outbox and inbox, and the migration that creates them."""
    metadata = MetaData()
    add_messaging_tables(metadata)
    return metadata, (Migration(1, "outbox and inbox", create_tables(metadata, OUTBOX, INBOX)),)


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str:
    """The decoded value of one Kafka header."""
    return dict(headers)[name].decode()


async def migrated_unit_of_work(
    engine: AsyncEngine, metadata: MetaData, migrations: Sequence[Migration], *, service: str
) -> UnitOfWork:
    """A service's unit of work on `engine`, after running its migrations."""
    await migrate(engine, migrations, schema=service)
    return UnitOfWork(make_sessions(engine), metadata, source=f"/baton/{service}")


async def outbox_events(uow: UnitOfWork, metadata: MetaData) -> list[CloudEvent]:
    """Every event in the outbox, oldest first, read back as a consumer would read it."""
    outbox = metadata.tables[OUTBOX]
    async with uow.read() as session:
        rows = (await session.execute(select(outbox).order_by(outbox.c.id))).all()
    return [
        CloudEvent.from_kafka(row.message_key, row.value, [(name, value.encode()) for name, value in row.headers])
        for row in rows
    ]
