"""Outbox relay: publishes committed outbox rows to Kafka in order, then marks them sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice

from sqlalchemy import BigInteger, MetaData, Row, Table, Update, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import advisory_lock_key, is_postgres
from shared.envelope import utc_now
from shared.failpoints import Failpoints
from shared.kafka import OutboundRecord, Publisher
from shared.metrics import count_produced, sample_outbox_backlog
from shared.sessions import Sessions
from shared.tables import OUTBOX

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommittedEvent:
    """An outbox row its writer committed in this process, handed to this process's relay to publish at once."""

    row_id: int
    record: OutboundRecord


class OutboxRelay:
    """Moves outbox rows to the broker: at least once, in commit order, never blocking the writers.

    A crash between publishing and marking rows sent republishes them with the same event ids;
    consumers' inboxes absorb the duplicates.

    The rows this process's writers commit are handed over (`hand_over`) and published straight from memory, in the
    order their commits ended, then marked sent in the background: no round trip between a commit and its
    publication. Everything else is read from the table, oldest first, under the outbox turn (one replica at a time):
    - at start and after any failure, every unsent row, until a read finds less than a batch (catching up; rows
      handed over meanwhile are left to those reads);
    - when a process without a relay (a command-line tool) NOTIFYs, every unsent row;
    - every `idle_seconds`, rows unsent for `grace_seconds`: those a crashed or stuck process left behind (on
      SQLite, with no other process, every unsent row).
    Reading the table always comes before publishing what was handed over, so a lead's older event, still unsent in
    the table, is never overtaken by a newer one from memory.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: Sessions,
        metadata: MetaData,
        publisher: Publisher,
        lock_name: str,
        batch_size: int = 500,
        idle_seconds: float = 1.0,
        grace_seconds: float = 5.0,
        mark_interval_seconds: float = 0.2,
        max_backoff_seconds: float = 5.0,
        failpoints: Failpoints | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._outbox = metadata.tables[OUTBOX]
        self._publisher = publisher
        self._lock_name = lock_name
        self._lock_key = advisory_lock_key("outbox:" + lock_name)
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        # Only PostgreSQL has replicas, whose relays publish their own rows from memory: on SQLite the one relay
        # can read every unsent row at any time.
        self._mark_interval = mark_interval_seconds
        self._grace = timedelta(seconds=grace_seconds) if is_postgres(engine) else None
        self._max_backoff = max_backoff_seconds
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._failpoints = failpoints or Failpoints()
        self._claim = _claim_statement(self._outbox, self._lock_key, batch_size, is_postgres(engine))
        self._mark_sent = _mark_statement(self._outbox, is_postgres(engine))
        self._any_unsent = (
            select(self._outbox.c.id)
            .where(self._outbox.c.sent_at.is_(None), self._outbox.c.created_at < bindparam("horizon"))
            .limit(1)
        )
        # What this process's writers NOTIFY with: they wake this relay in process already (`wake`), so their
        # notifications would only make it claim again, and find nothing (three round trips per commit).
        self.notify_origin = secrets.token_hex(8)
        # Publishing what is handed over: off until the table has been caught up with (and after any failure).
        self._direct = False
        self._handed: deque[CommittedEvent] = deque()
        self._read_all_due = True
        self._last_read = -float("inf")
        self._published_unmarked: list[int] = []
        self._marking: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Ask the loop to end at its next step."""
        self._stopping = True
        self._wakeup.set()

    def wake(self) -> None:
        """Tell the relay that new rows were committed."""
        self._wakeup.set()

    def hand_over(self, events: Sequence[CommittedEvent]) -> None:
        """Rows a writer of this process just committed, in commit order: published from memory unless the relay is
        catching up with the table (which then publishes them)."""
        if self._direct:
            self._handed.extend(events)
        self._wakeup.set()

    @property
    def notify_channel(self) -> str | None:
        """The PostgreSQL channel writers NOTIFY after committing events (None on SQLite: one process)."""
        return notify_channel_for(self._engine, self._lock_name)

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
            self._read_all_due = True
            self._wakeup.set()

    async def _relay(self) -> None:
        backoff = 0.1
        try:
            while not self._stopping:
                await sample_outbox_backlog(self._sessions, self._outbox)
                try:
                    more = await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._catch_up()
                    log.warning("outbox relay failed, retrying in %.1fs: %r", backoff, exc)
                    await self._wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                backoff = 0.1
                if not more:
                    await self._wait(self._idle_seconds - (time.monotonic() - self._last_read))
        finally:
            with contextlib.suppress(Exception):
                await self._mark_published()

    async def _step(self) -> bool:
        """Read the table if due, else publish what was handed over; True if there may be more to do at once."""
        if not self._direct or self._read_all_due:
            self._read_all_due = False
            if await self._read_table(everything=True) >= self._batch_size:
                self._read_all_due = True
            elif not self._direct:
                # Caught up. Rows committed from now on are handed over; one more full read publishes those
                # committed before (their hand-over came too early), ahead of anything handed over.
                self._direct = self._read_all_due = True
            return self._read_all_due or bool(self._handed)
        read_due = time.monotonic() - self._last_read >= self._idle_seconds
        if read_due and await self._read_table(everything=False) >= self._batch_size:
            self._last_read = -float("inf")  # more left behind: read again at once
            return True
        return await self.publish_handed() > 0

    def _catch_up(self) -> None:
        """After a failure: forget what was handed over (it stays unsent in the table) and read the table."""
        self._direct = False
        self._handed.clear()
        self._read_all_due = True

    async def _read_table(self, *, everything: bool) -> int:
        unsent_for = None if everything else self._grace
        if unsent_for is None:  # rows published from memory are marked first, or the read would publish them again
            await self._mark_published()
        self._last_read = time.monotonic()
        return await self.publish_pending(unsent_for=unsent_for)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), max(seconds, 0.0))
        self._wakeup.clear()

    async def publish_handed(self) -> int:
        """Publish a batch of the rows handed over, in order; they are marked sent in the background."""
        batch = list(islice(self._handed, self._batch_size))
        if not batch:
            return 0
        await self._publisher.publish([event.record for event in batch])
        for _ in batch:
            self._handed.popleft()
        count_produced(event.record.topic for event in batch)
        self._failpoints.hit("relay.after_publish")
        self._published_unmarked.extend(event.row_id for event in batch)
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._mark_in_background())
        return len(batch)

    async def _mark_in_background(self) -> None:
        try:
            # Marks wait a moment and go together: one commit for all the batches published meanwhile.
            await asyncio.sleep(self._mark_interval)
            await self._mark_published()
        except Exception as exc:  # the ids stay queued: the next round or table read marks them
            log.warning("outbox rows published but not yet marked sent: %r", exc)

    async def _mark_published(self) -> None:
        """Mark sent every row published from memory so far, in one autocommit statement per round."""
        if self._marking is not None and self._marking is not asyncio.current_task():
            marking, self._marking = self._marking, None
            marking.cancel()  # it waits to gather more; what it holds is put back and marked here
            await asyncio.wait([marking])
        while self._published_unmarked:
            ids, self._published_unmarked = self._published_unmarked, []
            try:
                async with self._engine.connect() as connection:
                    autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await autocommit.execute(self._mark_sent, {"ids": ids, "sent_at": utc_now()})
            except BaseException:
                self._published_unmarked[:0] = ids  # published already: a later read would publish them again
                raise

    async def publish_pending(self, *, unsent_for: timedelta | None = None) -> int:
        """Publish one batch of unsent rows (only those unsent for `unsent_for`, if given) and mark them sent;
        returns how many were published.

        The rows are marked sent in the statement that reads them, but that only counts once the transaction
        commits, after the broker acknowledged them: a failed publish rolls the mark back."""
        self._wakeup.clear()
        now = utc_now()
        horizon = now - unsent_for if unsent_for is not None else now + timedelta(days=1)
        async with self._sessions() as session:
            # A plain read first (one round trip on PostgreSQL, shared.first_write): most reads find nothing, and
            # claiming nothing would take three.
            if await session.scalar(self._any_unsent, {"horizon": horizon}) is None:
                return 0
        async with self._sessions() as session, session.begin():
            claimed = (await session.execute(self._claim, {"sent_at": now, "horizon": horizon})).all()
            rows = sorted(claimed, key=lambda row: row.id)
            if not rows:
                return 0
            await self._publisher.publish([_to_record(row) for row in rows])
            count_produced(row.topic for row in rows)
            self._failpoints.hit("relay.after_publish")
        if self._handed:  # published from the table already: not again from memory
            published = {row.id for row in rows}
            self._handed = deque(event for event in self._handed if event.row_id not in published)
        return len(rows)

    async def pending_count(self) -> int:
        """Rows committed but not yet published."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(self._outbox).where(self._outbox.c.sent_at.is_(None))
            )
        return int(count or 0)


def notify_channel_for(engine: AsyncEngine, lock_name: str) -> str | None:
    """The channel that wakes the relays named `lock_name` (a service's schema) on PostgreSQL; None on SQLite."""
    return f"baton_outbox_{advisory_lock_key('outbox:' + lock_name)}" if is_postgres(engine) else None


def _claim_statement(outbox: Table, lock_key: int, batch_size: int, postgres: bool) -> Update:
    """Marking the oldest unsent rows sent and returning them (RETURNING's order is unspecified: sort by id); built
    once per relay."""
    oldest = select(outbox.c.id).where(outbox.c.sent_at.is_(None), outbox.c.created_at < bindparam("horizon"))
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


def _mark_statement(outbox: Table, postgres: bool) -> Update:
    """Marking rows sent by id: on PostgreSQL one array parameter, so one prepared statement whatever the count."""
    if postgres:
        which = outbox.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
    else:
        which = outbox.c.id.in_(bindparam("ids", expanding=True))
    return update(outbox).where(which).values(sent_at=bindparam("sent_at"))


def _to_record(row: Row[tuple[object, ...]]) -> OutboundRecord:
    headers = [(name, value.encode()) for name, value in row.headers]
    return OutboundRecord(topic=row.topic, key=row.message_key, value=row.value, headers=headers)
