"""PostgreSQL transactions begin at their first statement that writes or locks (shared.first_write): reads before it
run outside the transaction, a last statement that is the only write runs alone, and nothing else changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.first_write import reads_only
from shared.uow import UnitOfWork
from shared.writes import write_rows
from tests.integration.conftest import effects
from tests.support.server_log import ServerLog


@pytest.fixture
def server_log(engine: AsyncEngine) -> Iterator[ServerLog]:
    yield ServerLog(engine)


async def stored_notes(uow: UnitOfWork) -> dict[str, str | None]:
    async with uow.read() as session:
        return {row.event_id: row.note for row in await session.execute(select(effects))}


async def test_reads_then_writes_sent_last_need_neither_begin_nor_commit(
    uow: UnitOfWork, server_log: ServerLog
) -> None:
    async with uow.transaction() as tx:
        await write_rows(tx.session, effects, [{"event_id": "e-0", "note": "before"}])
    server_log.queries.clear()
    async with uow.transaction() as tx:
        seen = await tx.session.scalar(select(effects.c.note).where(effects.c.event_id == "e-0"))
        await write_rows(tx.session, effects, [{"event_id": "e-1", "note": f"saw {seen}"}])
        await tx.mark_all_processed_last([("e-1", "t")])
    assert server_log.kinds() == ["SELECT", "WITH"], server_log.queries
    assert await stored_notes(uow) == {"e-0": "before", "e-1": "saw before"}


async def test_a_session_that_only_reads_sends_only_its_reads(uow: UnitOfWork, server_log: ServerLog) -> None:
    async with uow.read() as session:
        assert await session.scalar(select(effects.c.note)) is None
        assert list(await session.scalars(select(effects.c.event_id))) == []
    assert server_log.kinds() == ["SELECT", "SELECT"], server_log.queries


async def test_a_last_statement_that_fails_alone_leaves_nothing(uow: UnitOfWork, server_log: ServerLog) -> None:
    async with uow.transaction() as tx:
        await tx.mark_all_processed([("e-1", "t")])
    server_log.queries.clear()
    with pytest.raises(IntegrityError):
        async with uow.transaction() as tx:
            await tx.session.scalar(select(effects.c.note))
            await write_rows(tx.session, effects, [{"event_id": "e-2", "note": "never"}])
            await tx.mark_all_processed_last([("e-2", "t"), ("e-1", "t")])
    assert "BEGIN" not in server_log.kinds(), server_log.queries
    assert await stored_notes(uow) == {}


async def test_a_write_before_the_last_statement_begins_the_transaction_and_a_failure_rolls_it_back(
    uow: UnitOfWork, server_log: ServerLog
) -> None:
    with pytest.raises(RuntimeError):
        async with uow.transaction() as tx:
            await tx.session.scalar(select(effects.c.note))
            await write_rows(tx.session, effects, [{"event_id": "e-1", "note": "sent by the next read"}])
            assert await tx.session.scalar(select(effects.c.note)) == "sent by the next read"
            raise RuntimeError("the handler fails after its writes were sent")
    # The driver logs its own BEGIN, COMMIT and ROLLBACK a turn of the event loop later: a read after gives it time.
    assert await stored_notes(uow) == {}
    assert server_log.kinds() == ["SELECT", "BEGIN", "WITH", "SELECT", "ROLLBACK", "SELECT"], server_log.queries


async def test_a_locking_read_begins_the_transaction_and_its_lock_holds_to_the_commit(
    uow: UnitOfWork, engine: AsyncEngine, server_log: ServerLog
) -> None:
    async with uow.transaction() as tx:
        await write_rows(tx.session, effects, [{"event_id": "e-1", "note": "locked"}])
    server_log.queries.clear()
    async with uow.transaction() as tx:
        locked = select(effects.c.note).where(effects.c.event_id == "e-1").with_for_update()
        assert await tx.session.scalar(locked) == "locked"
        async with engine.connect() as other:
            with pytest.raises(DBAPIError, match="could not obtain lock"):
                await other.execute(text("SELECT note FROM effects WHERE event_id = 'e-1' FOR UPDATE NOWAIT"))
        await write_rows(tx.session, effects, [{"event_id": "e-2", "note": "written under the lock"}])
    assert await stored_notes(uow) == {"e-1": "locked", "e-2": "written under the lock"}  # the read after: see above
    kinds = server_log.kinds()
    assert kinds[:2] == ["BEGIN", "SELECT"] and kinds[-2:] == ["COMMIT", "SELECT"], server_log.queries


async def test_a_connection_goes_back_to_the_pool_with_its_usual_transactions(
    uow: UnitOfWork, engine: AsyncEngine
) -> None:
    for _ in range(12):  # more than the pool holds: every connection served a unit of work
        async with uow.transaction() as tx:
            await tx.session.scalar(select(effects.c.note))
    for _ in range(12):
        async with engine.connect() as connection:
            await connection.execute(effects.insert().values(event_id="e-1", note="rolled back"))
            await connection.rollback()
    assert await stored_notes(uow) == {}


@pytest.mark.parametrize(
    ("statement", "plain_read"),
    [
        ("SELECT note FROM effects WHERE event_id = $1", True),
        ("  select count(*) from effects", True),
        ("SELECT note FROM effects WHERE event_id = $1 FOR UPDATE", False),
        ("SELECT note FROM effects ORDER BY event_id FOR NO KEY UPDATE SKIP LOCKED", False),
        ("SELECT note FROM effects FOR SHARE", False),
        ("SELECT pg_try_advisory_xact_lock(42)", False),
        ("SELECT pg_notify('channel', 'origin')", False),
        ("WITH w0 AS (INSERT INTO effects VALUES ($1, $2)) SELECT 1", False),
        ("INSERT INTO effects VALUES ($1, $2)", False),
        ("UPDATE effects SET note = $1", False),
    ],
)
def test_only_plain_reads_run_outside_the_transaction(statement: str, plain_read: bool) -> None:
    assert reads_only(statement) is plain_read
