"""Retention: how long bookkeeping rows (published outbox rows, inbox ids) are kept before they are deleted.

Published outbox rows are needed only until the broker has them (they also carry personal data); inbox ids only
for as long as the broker could redeliver an event (its log retention), after which a duplicate cannot arrive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from sqlalchemy import MetaData, delete

from shared.envelope import utc_now
from shared.tables import INBOX, OUTBOX
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)


async def prune(uow: UnitOfWork, metadata: MetaData, *, outbox_keep: timedelta, inbox_keep: timedelta) -> int:
    """Delete published outbox rows and inbox ids past their retention; returns how many rows went."""
    outbox, inbox = metadata.tables[OUTBOX], metadata.tables[INBOX]
    now = utc_now()
    async with uow.transaction() as tx:
        sent = await tx.session.execute(delete(outbox).where(outbox.c.sent_at < now - outbox_keep))
        seen = await tx.session.execute(delete(inbox).where(inbox.c.processed_at < now - inbox_keep))
    return int(getattr(sent, "rowcount", 0) or 0) + int(getattr(seen, "rowcount", 0) or 0)


def pruner(
    metadata: MetaData, *, outbox_keep: timedelta, inbox_keep: timedelta, every: timedelta = timedelta(hours=1)
) -> Callable[[UnitOfWork], Coroutine[Any, Any, None]]:
    """A background task pruning on a schedule (failures are retried at the next turn)."""

    async def run(uow: UnitOfWork) -> None:
        while True:
            try:
                gone = await prune(uow, metadata, outbox_keep=outbox_keep, inbox_keep=inbox_keep)
                if gone:
                    log.info("retention: deleted %d outbox/inbox rows", gone)
            except Exception as exc:
                log.warning("retention pass failed, retrying at the next: %r", exc)
            await asyncio.sleep(every.total_seconds())  # poll: a schedule, not a wait for a condition

    return run
