"""Writes kept for the transaction's next statement (shared.writes): on PostgreSQL they travel together as one
statement, and nothing a caller can observe differs from running each at once (as on SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, Numeric, String, Table, event, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import Migration, UtcDateTime, create_tables, make_engine, migrate
from shared.events import LeadRoutedV1
from shared.outbox import CommittedEvent
from shared.sessions import make_sessions
from shared.tables import INBOX, OUTBOX, add_messaging_tables
from shared.uow import UnitOfWork
from shared.writes import CheckedWrite, add_to_rows, create_unchanged_check, update_rows, write_checked, write_rows
from tests.integration.conftest import migrated_engine

metadata = MetaData()
add_messaging_tables(metadata)
notes = Table(
    "notes",
    metadata,
    Column("note_id", String(36), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("written_at", UtcDateTime(), nullable=False),
    Column("tally", Integer),
)
tallies = Table("tallies", metadata, Column("name", String(50), primary_key=True), Column("count", Integer))
# Running totals, most of which a write leaves alone (add_to_rows).
totals = Table(
    "totals",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("name", String(50), primary_key=True),
    *(Column(f"count_{n}", Integer, nullable=False, server_default="0") for n in range(3)),
    Column("amount", Numeric(20, 4), nullable=False, server_default="0"),
)
TOTALS = ("count_0", "count_1", "count_2", "amount")
MIGRATIONS = (
    Migration(1, "kept writes", create_tables(metadata, "notes", "tallies", "totals", OUTBOX, INBOX)),
    Migration(2, "the check of checked writes", create_unchanged_check),
)
# A compare-and-set: a tally moves on only from the count it was read at.
MOVE_TALLIES = CheckedWrite(
    tallies,
    "UPDATE tallies SET count = moved.count FROM unnest(CAST(:{p}name AS varchar[]), CAST(:{p}was AS integer[]), "
    "CAST(:{p}count AS integer[])) AS moved(name, was, count) WHERE tallies.name = moved.name "
    "AND tallies.count = moved.was",
)
AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on PostgreSQL (a fresh schema) or SQLite."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        url: str = request.getfixturevalue("database_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'kept.db'}"
    engine = make_engine(url, schema=schema)
    await migrate(engine, MIGRATIONS, schema=schema)
    yield engine
    await engine.dispose()


class Statements:
    """The statements an engine runs, as the server receives them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._note)

    def _note(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "PRAGMA")):
            self.seen.append(statement)


def note(number: int, **values: Any) -> dict[str, Any]:
    return {"note_id": f"n{number}", "body": {"n": number, "tags": ["a"]}, "written_at": AT, "tally": None, **values}


def routed(number: int) -> LeadRoutedV1:
    return LeadRoutedV1(
        lead_id=f"lead-{number}", assignment_id=f"a-{number}", kind="assigned", rep_id="rep-a", team=None,
        reason="test", score=50, grade="B", routed_at=AT, sla_deadline=None,
    )  # fmt: skip


async def test_writes_before_the_commit_go_as_one_statement_and_the_relay_gets_every_row_id(
    engine: AsyncEngine,
) -> None:
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", hand_over=handed.extend)
    statements = Statements(engine)
    async with uow.transaction() as tx:
        await write_rows(tx.session, notes, [note(1), note(2)])
        await tx.emit_all([routed(1), routed(2)])
        await write_rows(tx.session, tallies, [{"name": "notes", "count": 2}])
        await tx.emit(routed(3))  # joins the rows of the first emit
        written = list(statements.seen)
    sent = list(statements.seen)
    async with uow.read() as session:
        stored = (await session.execute(select(notes).order_by(notes.c.note_id))).mappings().all()
        tally = await session.scalar(select(tallies.c.count))
        outbox = (await session.execute(select(metadata.tables[OUTBOX]).order_by("id"))).mappings().all()
    assert [(row["note_id"], row["body"], row["written_at"]) for row in stored] == [
        ("n1", {"n": 1, "tags": ["a"]}, AT),
        ("n2", {"n": 2, "tags": ["a"]}, AT),
    ]
    assert tally == 2
    assert [row["value"] for row in outbox] == [event.record.value for event in handed]
    assert [event.row_id for event in handed] == [row["id"] for row in outbox]
    assert [row["event_id"] for row in outbox] == [event.id for event in tx.emitted]
    if engine.dialect.name == "postgresql":
        assert written == [], "a kept write was sent before the transaction's last statement"
        assert len(sent) == 1, sent
    else:
        assert len(written) == 4


async def test_a_read_sees_the_writes_kept_before_it(engine: AsyncEngine) -> None:
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test")
    async with uow.transaction() as tx:
        await write_rows(tx.session, notes, [note(1)])
        await update_rows(tx.session, notes, [{"note_id": "n1", "tally": 7}], key=("note_id",))
        assert await tx.session.scalar(select(notes.c.tally).where(notes.c.note_id == "n1")) == 7
        await write_rows(tx.session, notes, [note(2)])
    async with uow.read() as session:
        assert list(await session.scalars(select(notes.c.note_id).order_by(notes.c.note_id))) == ["n1", "n2"]


async def test_an_upsert_replaces_only_the_columns_named(engine: AsyncEngine) -> None:
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test")
    async with uow.transaction() as tx:
        await write_rows(tx.session, notes, [note(1, tally=1)])
    async with uow.transaction() as tx:
        await write_rows(tx.session, notes, [note(1, body={"n": 9}, tally=5), note(2)], replace=("body",))
    async with uow.read() as session:
        rows = (await session.execute(select(notes.c.note_id, notes.c.body, notes.c.tally).order_by("note_id"))).all()
    assert [tuple(row) for row in rows] == [("n1", {"n": 9}, 1), ("n2", {"n": 2, "tags": ["a"]}, None)]


async def test_an_upsert_adds_to_the_columns_named_and_two_of_one_shape_add_up(engine: AsyncEngine) -> None:
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test")
    async with uow.transaction() as tx:
        await write_rows(tx.session, tallies, [{"name": "won", "count": 2}])
    async with uow.transaction() as tx:
        # the same key in both writes: one statement could not change that row twice, so they must not join
        await write_rows(
            tx.session, tallies, [{"name": "won", "count": 3}, {"name": "lost", "count": 1}], add=("count",)
        )
        await write_rows(tx.session, tallies, [{"name": "won", "count": 4}], add=("count",))
    async with uow.read() as session:
        rows = (await session.execute(select(tallies).order_by(tallies.c.name))).all()
    assert [tuple(row) for row in rows] == [("lost", 1), ("won", 9)]


async def test_sparse_rows_add_what_they_give_and_travel_with_the_other_writes(engine: AsyncEngine) -> None:
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test")
    async with uow.transaction() as tx:
        await add_to_rows(tx.session, totals, [{"day": "d1", "name": "a", "count_1": 2}], add=TOTALS)
    statements = Statements(engine)
    async with uow.transaction() as tx:
        await write_rows(tx.session, tallies, [{"name": "x", "count": 1}])
        await add_to_rows(tx.session, totals, [
            {"day": "d1", "name": "a", "count_1": -1, "amount": Decimal("1250.5001")},
            {"day": "d1", "name": "b"},  # created at zero
            {"day": "d2", "name": "a", "count_0": 1, "count_2": 3, "amount": Decimal("-0.0001")},
        ], add=TOTALS)  # fmt: skip
        await add_to_rows(tx.session, totals, [{"day": "d1", "name": "a", "amount": Decimal("0.4999")}], add=TOTALS)
    sent = list(statements.seen)
    async with uow.read() as session:
        rows = (await session.execute(select(totals).order_by(totals.c.day, totals.c.name))).all()
    assert [tuple(row) for row in rows] == [
        ("d1", "a", 0, 1, 0, Decimal("1251.0000")),
        ("d1", "b", 0, 0, 0, Decimal("0")),
        ("d2", "a", 1, 0, 3, Decimal("-0.0001")),
    ]
    if engine.dialect.name == "postgresql":
        assert len(sent) == 2, sent  # the insert and the first upsert together, then the last
    with pytest.raises(ValueError, match="count_9"):
        async with uow.transaction() as tx:
            await add_to_rows(tx.session, totals, [{"day": "d1", "name": "a", "count_9": 1}], add=TOTALS)


async def test_a_kept_write_that_fails_fails_the_transaction_and_writes_nothing(engine: AsyncEngine) -> None:
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", hand_over=handed.extend)
    async with uow.transaction() as tx:
        await write_rows(tx.session, notes, [note(1)])
    with pytest.raises(IntegrityError):
        async with uow.transaction() as tx:
            await write_rows(tx.session, tallies, [{"name": "notes", "count": 1}])
            await tx.emit(routed(1))
            await write_rows(tx.session, notes, [note(2), note(1)])  # n1 is there already
    async with uow.read() as session:
        assert await session.scalar(select(tallies.c.count)) is None
        assert list(await session.scalars(select(notes.c.note_id))) == ["n1"]
        assert await session.scalar(select(metadata.tables[OUTBOX].c.id)) is None
    assert handed == []


async def test_writes_that_are_never_sent_leave_nothing_behind(engine: AsyncEngine) -> None:
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test")
    with pytest.raises(RuntimeError):
        async with uow.transaction() as tx:
            await write_rows(tx.session, notes, [note(1)])
            raise RuntimeError("the handler failed after writing")
    async with uow.transaction() as tx:  # the next transaction sends none of them
        await write_rows(tx.session, notes, [note(2)])
    async with uow.read() as session:
        assert list(await session.scalars(select(notes.c.note_id))) == ["n2"]


async def test_a_value_too_long_for_its_column_is_never_cut_short(engine: AsyncEngine) -> None:
    """PostgreSQL refuses it, as a plain insert would (an array cast to varchar(36)[] would cut it silently and
    store another key); SQLite, which has no lengths, keeps it whole."""
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test")
    long_id = "n-" + "x" * 60
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="too long"):
            async with uow.transaction() as tx:
                await write_rows(tx.session, notes, [note(1, note_id=long_id)])
    else:
        async with uow.transaction() as tx:
            await write_rows(tx.session, notes, [note(1, note_id=long_id)])
    async with uow.read() as session:
        stored = list(await session.scalars(select(notes.c.note_id)))
    assert stored == ([] if engine.dialect.name == "postgresql" else [long_id])


async def test_events_recorded_last_go_with_the_other_writes_and_one_recorded_before_fails_the_commit(
    engine: AsyncEngine,
) -> None:
    """The inbox rows recorded last travel with the outbox rows in one statement on PostgreSQL. An id recorded
    before fails the commit, and nothing the transaction wrote stays."""
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", hand_over=handed.extend)
    async with uow.transaction() as tx:
        assert await tx.mark_all_processed([("seen-before", "t")]) == {"seen-before"}
    statements = Statements(engine)
    async with uow.transaction() as tx:
        await tx.emit_all([routed(1), routed(2)])
        await write_rows(tx.session, notes, [note(1)])
        before = len(statements.seen)
        await tx.mark_all_processed_last([("e-1", "t"), ("e-2", "t"), ("e-1", "t")])
    sent = statements.seen[before:]
    with pytest.raises(IntegrityError):
        async with uow.transaction() as tx:
            await write_rows(tx.session, notes, [note(2)])
            await tx.emit(routed(3))
            await tx.mark_all_processed_last([("e-3", "t"), ("seen-before", "t")])
    async with uow.read() as session:
        outbox = (await session.execute(select(metadata.tables[OUTBOX]).order_by("id"))).mappings().all()
        inbox = set(await session.scalars(select(metadata.tables[INBOX].c.event_id)))
        stored = list(await session.scalars(select(notes.c.note_id)))
    assert [event.row_id for event in handed] == [row["id"] for row in outbox] and len(handed) == 2
    assert inbox == {"seen-before", "e-1", "e-2"} and stored == ["n1"]
    if engine.dialect.name == "postgresql":
        assert before == 0 and len(sent) == 1, sent


async def test_a_checked_write_that_changes_every_row_given_goes_with_the_other_writes(engine: AsyncEngine) -> None:
    """On PostgreSQL; SQLite refuses checked writes (nothing there reads without locks: one writer at a time)."""
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", hand_over=handed.extend)
    if engine.dialect.name != "postgresql":
        with pytest.raises(TypeError):
            async with uow.transaction() as tx:
                await write_checked(tx.session, MOVE_TALLIES, {"name": ["won"], "was": [1], "count": [2]})
        return
    async with uow.transaction() as tx:
        await write_rows(tx.session, tallies, [{"name": "won", "count": 1}, {"name": "lost", "count": 4}])
    statements = Statements(engine)
    async with uow.transaction() as tx:
        await write_checked(tx.session, MOVE_TALLIES, {"name": [], "was": [], "count": []})  # nothing to write
        await write_checked(tx.session, MOVE_TALLIES, {"name": ["won", "lost"], "was": [1, 4], "count": [2, 5]})
        await tx.emit(routed(1))
        await write_rows(tx.session, notes, [note(1)])
    assert len(statements.seen) == 1, statements.seen
    async with uow.read() as session:
        assert dict((await session.execute(select(tallies.c.name, tallies.c.count))).tuples().all()) == {
            "won": 2,
            "lost": 5,
        }
        assert list(await session.scalars(select(notes.c.note_id))) == ["n1"]
    assert len(handed) == 1


@pytest.fixture
async def postgres_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on a fresh PostgreSQL schema."""
    async with migrated_engine(database_url, MIGRATIONS) as engine:
        yield engine


async def test_a_checked_write_that_misses_a_row_fails_its_statement_and_nothing_stays(
    postgres_engine: AsyncEngine,
) -> None:
    """A row changed since it was read (or never there) fails the statement as a constraint would, and everything
    the transaction did with it is rolled back."""
    engine = postgres_engine
    handed: list[CommittedEvent] = []
    uow = UnitOfWork(make_sessions(engine), metadata, source="/baton/test", hand_over=handed.extend)
    async with uow.transaction() as tx:
        await write_rows(tx.session, tallies, [{"name": "won", "count": 1}, {"name": "lost", "count": 9}])
    moved_on: list[dict[str, list[Any]]] = [
        {"name": ["won", "lost"], "was": [1, 4], "count": [2, 5]},  # lost moved on since it was read at 4
        {"name": ["won", "drawn"], "was": [1, 0], "count": [2, 1]},  # drawn has no row
    ]
    for moves in moved_on:
        with pytest.raises(IntegrityError, match="unchanged_since_read"):
            async with uow.transaction() as tx:
                await write_rows(tx.session, notes, [note(1)])
                await write_checked(tx.session, MOVE_TALLIES, moves)
                await tx.emit(routed(1))
        async with uow.read() as session:
            assert dict((await session.execute(select(tallies.c.name, tallies.c.count))).tuples().all()) == {
                "won": 1,
                "lost": 9,
            }
            assert list(await session.scalars(select(notes.c.note_id))) == []
            assert await session.scalar(select(metadata.tables[OUTBOX].c.id)) is None
    assert handed == []
