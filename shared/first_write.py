"""PostgreSQL transactions that begin at their first statement that writes or locks.

Under READ COMMITTED every statement reads its own snapshot, so a plain read gives the same answer inside a
transaction or outside one. Reads before a transaction's first write can thus run outside it, and a session that
only reads never begins one: a read costs one round trip instead of three (BEGIN, the read, ROLLBACK). The first
write or locking read begins the transaction, as BEGIN always did, and everything after it runs in it. A unit of
work whose only write is its last statement (a consumed batch reads what it needs, then sends every write as one
statement, shared.writes) runs that statement alone, a transaction of its own: atomic, committed or failed as a
whole, in two round trips instead of four (no BEGIN, no COMMIT).

Only what is plainly a read runs outside the transaction: a statement starting with SELECT that takes no row lock
and calls none of the functions with effects. Anything else (WITH, which may write; SELECT ... FOR UPDATE; advisory
locks; NOTIFY) begins the transaction first.

The transaction is the driver's own: SQLAlchemy's asyncpg adapter begins one before a statement unless it is in
autocommit. Every checkout leaves it in autocommit until the first statement that needs a transaction. Commit and
rollback then go as usual, and do nothing when nothing began.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.sessions import DbSession

_KEY = "baton.first_write"
# What a SELECT may call that does more than read: it must run in the transaction.
_EFFECTS = (
    " FOR UPDATE", " FOR NO KEY UPDATE", " FOR SHARE", " FOR KEY SHARE", "ADVISORY", "PG_NOTIFY", "NEXTVAL(",
    "SETVAL(", "SET_CONFIG(",
)  # fmt: skip
_reads: dict[str, bool] = {}


class FirstWrite:
    """The transaction of one checked-out connection, held off until its first statement that is not a plain read
    (or for good, if that statement is its last)."""

    __slots__ = ("_adapter", "_last", "begun")

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter
        self.begun = False
        self._last = False
        adapter.autocommit = True

    def last_statement_next(self) -> None:
        """The next statement is the last: if nothing began yet, it runs alone, as its own transaction."""
        self._last = True

    def before(self, statement: str) -> None:
        if self.begun or self._last or reads_only(statement):
            return
        self.begun = True
        self._adapter.autocommit = False  # the adapter begins before running this statement; so on, as usual

    def close(self) -> None:
        """Back to the driver's usual ways: every statement in a transaction."""
        self._adapter.autocommit = False


def reads_only(statement: str) -> bool:
    """Whether `statement` plainly reads: a SELECT without row locks or effects."""
    known = _reads.get(statement)
    if known is None:
        upper = statement.upper()
        known = upper.lstrip().startswith("SELECT") and not any(effect in upper for effect in _EFFECTS)
        if len(_reads) < 4096:
            _reads[statement] = known
    return known


def hold_off_begin(engine: AsyncEngine) -> None:
    """Every checkout of `engine` (PostgreSQL with asyncpg) holds its transaction off until its first statement that
    writes or locks."""
    sync_engine = engine.sync_engine
    event.listen(sync_engine, "checkout", _on_checkout)
    event.listen(sync_engine, "checkin", _on_checkin)
    event.listen(sync_engine, "before_cursor_execute", _before_cursor_execute)


def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    if not getattr(dbapi_connection, "_started", True):  # SQLAlchemy's asyncpg adapter, between transactions
        record.info[_KEY] = FirstWrite(dbapi_connection)


def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
    first_write: FirstWrite | None = record.info.pop(_KEY, None) if record is not None else None
    if first_write is not None:
        first_write.close()


def _before_cursor_execute(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
    first_write: FirstWrite | None = connection.info.get(_KEY)
    if first_write is not None:
        first_write.before(statement)


async def last_statement_next(session: DbSession) -> None:
    """The session's next statement is the last of its transaction: if nothing began yet, it runs alone, as a
    transaction of its own (no BEGIN, no COMMIT)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    first_write: FirstWrite | None = (await session.connection()).info.get(_KEY)
    if first_write is not None:
        first_write.last_statement_next()
