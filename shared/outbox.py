"""Outbox relay: publishes committed outbox rows to Kafka in order, then marks them sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from sqlalchemy import MetaData, Row, Table, Update, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import advisory_lock_key, is_postgres
from shared.envelope import utc_now
from shared.failpoints import Failpoints
from shared.kafka import OutboundRecord, Publisher
from shared.metrics import count_produced, sample_outbox_backlog
from shared.tables import OUTBOX

log = logging.getLogger(__name__)


class OutboxRelay:
    """Moves outbox rows to the broker: at least once, in commit order, never blocking the writers.

    A crash between publishing and marking rows sent republishes them with the same event ids;
    consumers' inboxes absorb the duplicates.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        metadata: MetaData,
        publisher: Publisher,
        lock_name: str,
        batch_size: int = 500,
        idle_seconds: float = 1.0,
        max_backoff_seconds: float = 5.0,
        failpoints: Failpoints | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._outbox = metadata.tables[OUTBOX]
        self._publisher = publisher
        self._lock_key = advisory_lock_key("outbox:" + lock_name)
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        self._max_backoff = max_backoff_seconds
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._failpoints = failpoints or Failpoints()
        self._claim = _claim_statement(self._outbox, self._lock_key, batch_size, is_postgres(engine))
        # What this process's writers NOTIFY with: they wake this relay in process already (`wake`), so their
        # notifications would only make it claim again, and find nothing (three round trips per commit).
        self.notify_origin = secrets.token_hex(8)

    def stop(self) -> None:
        """Ask the loop to end at its next step."""
        self._stopping = True
        self._wakeup.set()

    def wake(self) -> None:
        """Tell the relay that new rows were committed."""
        self._wakeup.set()

    @property
    def notify_channel(self) -> str | None:
        """The PostgreSQL channel writers NOTIFY after committing events (None on SQLite: one process)."""
        return f"baton_outbox_{self._lock_key}" if is_postgres(self._engine) else None

    async def run(self) -> None:
        """Relay forever; broker or database outages are retried with capped exponential backoff."""
        listener = asyncio.create_task(self._listen()) if self.notify_channel else None
        try:
            await self._relay()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener

    async def _listen(self) -> None:
        """LISTEN on the notify channel on a connection of its own; reconnects after a database outage (the
        relay's idle poll covers the gap)."""
        channel = self.notify_channel
        assert channel is not None
        while not self._stopping:
            try:
                async with self._engine.connect() as connection:
                    raw = (await connection.get_raw_connection()).driver_connection
                    assert raw is not None
                    closed = asyncio.Event()
                    raw.add_termination_listener(lambda *_, closed=closed: closed.set())
                    await raw.add_listener(channel, self._on_notify)
                    await closed.wait()  # until the connection dies; the relay cancels this task when it stops
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("outbox listener reconnecting: %r", exc)
                await asyncio.sleep(1.0)  # poll: retry the LISTEN connection

    def _on_notify(self, _connection: object, _pid: int, _channel: str, origin: str) -> None:
        """Rows committed in another process (a replica, a tool), or before this relay started listening."""
        if origin != self.notify_origin:
            self._wakeup.set()

    async def _relay(self) -> None:
        backoff = 0.1
        while not self._stopping:
            await sample_outbox_backlog(self._sessions, self._outbox)
            try:
                published = await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed, retrying in %.1fs: %r", backoff, exc)
                await self._wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.1
            if published < self._batch_size:
                await self._wait(self._idle_seconds)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows and mark them sent; returns how many were published.

        The rows are marked sent in the statement that reads them, but that only counts once the transaction
        commits, after the broker acknowledged them: a failed publish rolls the mark back."""
        self._wakeup.clear()
        async with self._sessions() as session, session.begin():
            rows = sorted((await session.execute(self._claim, {"sent_at": utc_now()})).all(), key=lambda row: row.id)
            if not rows:
                return 0
            await self._publisher.publish([_to_record(row) for row in rows])
            count_produced(row.topic for row in rows)
            self._failpoints.hit("relay.after_publish")
        return len(rows)

    async def pending_count(self) -> int:
        """Rows committed but not yet published."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(self._outbox).where(self._outbox.c.sent_at.is_(None))
            )
        return int(count or 0)


def _claim_statement(outbox: Table, lock_key: int, batch_size: int, postgres: bool) -> Update:
    """Marking the oldest unsent rows sent and returning them (RETURNING's order is unspecified: sort by id); built
    once per relay."""
    oldest = select(outbox.c.id).where(outbox.c.sent_at.is_(None))
    if postgres:
        # Only one replica relays at a time, so rows reach Kafka in commit order. The turn is taken in the statement
        # that claims the rows (one round trip): a CTE with a volatile call is evaluated once, and while another
        # replica has the turn this one claims nothing.
        turn = select(func.pg_try_advisory_xact_lock(lock_key).label("mine")).cte("turn")
        oldest = oldest.where(select(turn.c.mine).scalar_subquery())
    oldest = oldest.order_by(outbox.c.id).limit(batch_size)
    return (
        update(outbox)
        .where(outbox.c.id.in_(oldest.scalar_subquery()))
        .values(sent_at=bindparam("sent_at"))
        .returning(outbox.c.id, outbox.c.topic, outbox.c.message_key, outbox.c.value, outbox.c.headers)
    )


def _to_record(row: Row[tuple[object, ...]]) -> OutboundRecord:
    headers = [(name, value.encode()) for name, value in row.headers]
    return OutboundRecord(topic=row.topic, key=row.message_key, value=row.value, headers=headers)
