"""Retention deletes published outbox rows and old inbox ids, never unsent rows or recent ids."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import store
from shared.envelope import utc_now
from shared.events import LeadErasedV1
from shared.retention import prune
from tests.unit.fakes import migrated_unit_of_work


async def test_only_published_outbox_rows_and_old_inbox_ids_past_retention_are_deleted(engine: AsyncEngine) -> None:
    uow = await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="routing")
    outbox, inbox = store.metadata.tables["outbox"], store.metadata.tables["inbox"]
    long_ago = utc_now() - timedelta(days=30)
    async with uow.transaction() as tx:
        for lead in ("old-sent", "old-unsent", "new-sent"):
            await tx.emit(LeadErasedV1(lead_id=lead, erased_at=utc_now()))
        await tx.mark_processed("old-event", topic="t")
        await tx.mark_processed("new-event", topic="t")
        await tx.session.execute(update(outbox).where(outbox.c.message_key == b"old-sent").values(sent_at=long_ago))
        await tx.session.execute(update(outbox).where(outbox.c.message_key == b"new-sent").values(sent_at=utc_now()))
        await tx.session.execute(update(inbox).where(inbox.c.event_id == "old-event").values(processed_at=long_ago))

    assert await prune(uow, store.metadata, outbox_keep=timedelta(days=3), inbox_keep=timedelta(days=14)) == 2

    async with uow.read() as session:
        kept = sorted(key.decode() for key in (await session.scalars(select(outbox.c.message_key))).all())
        ids = (await session.scalars(select(inbox.c.event_id))).all()
    assert kept == ["new-sent", "old-unsent"]
    assert ids == ["new-event"]
