"""What a test engine's connections send to PostgreSQL, as the server receives it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class ServerLog:
    """What the engine's connections send, in order: statements once they ran, and BEGIN, COMMIT and ROLLBACK (which
    the driver sends itself, seen by asyncpg's query logger)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.queries: list[str] = []
        self._logged: set[int] = set()
        event.listen(engine.sync_engine, "checkout", self._on_checkout)
        event.listen(engine.sync_engine, "after_cursor_execute", self._on_statement)

    def _on_checkout(self, dbapi_connection: Any, *_: Any) -> None:
        driver = dbapi_connection.driver_connection
        if id(driver) not in self._logged:
            self._logged.add(id(driver))
            driver.add_query_logger(self._on_query)

    def _on_query(self, logged: Any) -> None:
        query = logged.query.strip().upper()
        if query.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.queries.append(query)

    def _on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.queries.append(statement.strip().upper())

    def kinds(self) -> list[str]:
        return [query.split()[0].rstrip(";") for query in self.queries]
