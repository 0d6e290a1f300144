"""A unit of database work on one pooled connection: what the services use of SQLAlchemy's AsyncSession (Core
statements; no ORM objects), without the ORM session's machinery.

Every consumed batch, lead post and relay round opened an AsyncSession, and its bookkeeping (the session
transaction's states and events, the connection it looks up per statement, the identity map it empties on close)
cost about as much of a service's CPU as the statements' own SQLAlchemy layer: a fifth of a millisecond per
transaction of two statements, measured against this class on the same engine. The semantics are the session's:
the connection is taken at the first statement and given back (rolled back) at close; `begin()` commits when its
block ends normally and rolls back if it raises; writes kept for later (shared.writes) go before any other
statement the session runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from sqlalchemy import Engine, Executable, Result, ScalarResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import TypedReturnsRows

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
_T = TypeVar("_T", bound=Any)


class DbSession:
    """One unit of work's statements, on one connection checked out at its first statement."""

    __slots__ = ("_connection", "_engine", "before_next_statement", "info")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        # Run (once) before the next statement: shared.writes sends the writes it kept this way.
        self.before_next_statement: Callable[[DbSession], Awaitable[None]] | None = None
        self.info: dict[str, Any] = {}

    async def __aenter__(self) -> DbSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def bind(self) -> AsyncEngine:
        """The engine the session's connection comes from."""
        return self._engine

    def get_bind(self) -> Engine:
        """The engine (synchronous face, as AsyncSession answers it): its dialect, or a key per database."""
        return self._engine.sync_engine

    async def connection(self) -> AsyncConnection:
        """The session's connection, checked out now if it has none yet."""
        if self._connection is None:
            self._connection = await self._engine.connect()
        return self._connection

    @overload
    async def execute(self, statement: TypedReturnsRows[_T], parameters: Parameters = None) -> Result[_T]: ...

    @overload
    async def execute(self, statement: Executable, parameters: Parameters = None) -> Result[Any]: ...

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Result[Any]:
        """Run a statement (a list of parameter sets: executemany); the result is buffered."""
        if self.before_next_statement is not None:
            hook, self.before_next_statement = self.before_next_statement, None
            await hook(self)
        connection = self._connection or await self.connection()
        return await connection.execute(statement, parameters)

    @overload
    async def scalar(self, statement: TypedReturnsRows[tuple[_T]], parameters: Parameters = None) -> _T | None: ...

    @overload
    async def scalar(self, statement: Executable, parameters: Parameters = None) -> Any: ...

    async def scalar(self, statement: Executable, parameters: Parameters = None) -> Any:
        """The first column of the first row, or None."""
        return (await self.execute(statement, parameters)).scalar()

    @overload
    async def scalars(
        self, statement: TypedReturnsRows[tuple[_T]], parameters: Parameters = None
    ) -> ScalarResult[_T]: ...

    @overload
    async def scalars(self, statement: Executable, parameters: Parameters = None) -> ScalarResult[Any]: ...

    async def scalars(self, statement: Executable, parameters: Parameters = None) -> ScalarResult[Any]:
        """The first column of every row."""
        return (await self.execute(statement, parameters)).scalars()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[DbSession]:
        """Commit what the block ran when it ends normally; roll it back if it raises."""
        try:
            yield self
        except BaseException:
            await self.rollback()
            raise
        await self.commit()

    async def commit(self) -> None:
        """Commit the connection's transaction, if a statement began one."""
        if self._connection is not None and self._connection.in_transaction():
            await self._connection.commit()

    async def rollback(self) -> None:
        """Roll the connection's transaction back, if a statement began one."""
        if self._connection is not None and self._connection.in_transaction():
            await self._connection.rollback()

    async def close(self) -> None:
        """Give the connection back to the pool (what was not committed is rolled back)."""
        connection, self._connection = self._connection, None
        self.info.clear()
        self.before_next_statement = None
        if connection is not None:
            await connection.close()


Sessions = Callable[[], DbSession]


def make_sessions(engine: AsyncEngine) -> Sessions:
    """A factory of sessions on `engine`."""

    def session() -> DbSession:
        return DbSession(engine)

    return session
