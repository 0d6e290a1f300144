"""Engines, session factories (shared.sessions) and versioned migrations. Nothing here is built at import time."""

from __future__ import annotations

import ssl
import zlib
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    String,
    Table,
    any_,
    bindparam,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from shared.envelope import utc_now
from shared.first_write import hold_off_begin
from shared.settings import DatabaseSslMode, ServiceSettings


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware, on SQLite too (which keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: Baton stores instants, give a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- many rows as one array per column (PostgreSQL) ---------------------------------------------------------------
# An executemany binds and executes a row at a time, in the driver and in the server; `unnest` of one array per
# column is one parameter set and one execution for any number of rows.

_POSTGRES = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves its constructor unannotated


def column_arrays(table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Rows as one list per column (the arrays `unnest_arrays` names), converted as the column's type
    would convert each value (JSON serialized, instants in UTC)."""
    arrays: dict[str, list[Any]] = {}
    for name in columns:
        column_type = table.c[name].type
        values = [row[name] for row in rows]
        if isinstance(column_type, JSON):
            values = [None if value is None else json_text(value) for value in values]
        elif isinstance(column_type, UtcDateTime):
            values = [column_type.process_bind_param(value, _POSTGRES) for value in values]
        arrays[name] = values
    return arrays


def json_text(value: Any) -> str:
    """`value` as JSON text, as kept writes store JSON columns."""
    # orjson: a tenth of json.dumps's time (a twentieth of routing's CPU went there); keys as json.dumps makes them.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def unnest_arrays(table: Table, columns: Sequence[str], *, prefix: str = "") -> str:
    """`unnest`'s arguments: a typed array parameter per column, named `prefix` + the column's name."""
    return ", ".join(f"CAST(:{prefix}{name} AS {_array_type(table, name)})" for name in columns)


def unnest_columns(table: Table, columns: Sequence[str]) -> list[str]:
    """The columns of `unnest(...) AS given(columns)` as the table takes them (JSON given as text)."""
    return [f"given.{name}::json" if isinstance(table.c[name].type, JSON) else f"given.{name}" for name in columns]


def _array_type(table: Table, name: str) -> str:
    return f"{record_type(table, name)}[]"


def record_type(table: Table, name: str) -> str:
    """The type a column's values are given as, in an array parameter or a JSON record (JSON given as text)."""
    column_type = table.c[name].type
    if isinstance(column_type, JSON):
        return "text"
    if isinstance(column_type, String):
        # Not varchar(n): an explicit cast to varchar(n) cuts a longer value short without a word, where storing it
        # in the column fails ("value too long"), as any other insert does.
        return "varchar"
    return str(column_type.compile(dialect=_POSTGRES))


# Up to this many values, a hot read's lists go as IN lists on PostgreSQL too (`few_enough`): a statement per count,
# each prepared once per connection and run on its generic plan. An array (`among`) is planned anew at every
# execution when it holds so few (PostgreSQL's generic plan guesses more), which cost about 70 µs of the server's
# CPU per read of 1 to 8 ids against 50 ids' 140 µs (an IN list of 50: 650 µs).
FEW_VALUES = 8


def few_enough(*lists: Sized) -> bool:
    """Whether every list has at most FEW_VALUES values (see FEW_VALUES)."""
    return all(len(values) <= FEW_VALUES for values in lists)


def among(column: ColumnElement[str], name: str, dialect: str) -> ColumnElement[bool]:
    """`column IN :name`, one statement whatever the number of values: `= ANY(:name)` on PostgreSQL, where an IN
    list is a new statement for every number of values (prepared anew by the server, a round trip more, and planned
    with every value); an expanding IN elsewhere. The array is `varchar[]`, not `varchar(n)[]`, which would cut a
    longer value short and find another row."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(String())))
    return column.in_(bindparam(name, expanding=True))


def is_postgres(engine: AsyncEngine) -> bool:
    """True when the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


@dataclass(frozen=True, slots=True)
class PostgresTls:
    """TLS towards PostgreSQL, with libpq's sslmode meanings: `require` encrypts without checking the server,
    `verify-ca` checks its certificate against `root_cert`, `verify-full` its host name too."""

    mode: DatabaseSslMode
    root_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> PostgresTls | None:
        """The service's PostgreSQL TLS settings, or None when DATABASE_SSLMODE is unset (the URL decides)."""
        if settings.database_sslmode is None:
            return None
        return cls(
            mode=settings.database_sslmode,
            root_cert=settings.database_sslrootcert,
            cert=settings.database_sslcert,
            key=settings.database_sslkey,
        )

    def asyncpg_ssl(self) -> ssl.SSLContext | bool:
        """asyncpg's `ssl` argument: False for disable, else a context doing what the mode promises."""
        if self.mode == "disable":
            return False
        context = ssl.create_default_context(cafile=self.root_cert)
        if self.mode in ("require", "verify-ca"):
            context.check_hostname = False
        if self.mode == "require":
            context.verify_mode = ssl.CERT_NONE
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


def make_engine(url: str, *, schema: str, tls: PostgresTls | None = None) -> AsyncEngine:
    """An async engine with timeouts, so an unreachable database fails fast instead of hanging; `tls` applies to
    PostgreSQL only."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _make_sqlite_engine(url)
    connect_args: dict[str, Any] = {"server_settings": {"search_path": schema}, "timeout": 5, "command_timeout": 30}
    if tls is not None:
        connect_args["ssl"] = tls.asyncpg_ssl()
    # No pool_pre_ping: with asyncpg it costs three round trips (BEGIN, ping, ROLLBACK) on every checkout. A
    # connection that died with the server fails its first statement instead; SQLAlchemy then invalidates the
    # whole pool, and that failure is an outage every caller already retries (consumers, relay) or answers with a
    # 503 (HTTP). Connections are renewed after five minutes anyway.
    engine = create_async_engine(
        url, pool_size=10, max_overflow=10, pool_timeout=5, pool_recycle=300, connect_args=connect_args
    )
    hold_off_begin(engine)  # units of work begin at their first write (shared.first_write)
    return engine


def _make_sqlite_engine(url: str) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _tune(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def advisory_lock_key(name: str) -> int:
    """A stable 31-bit key for pg advisory locks, derived from a name."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Migration:
    """One schema change of a service: applied once, in version order, in its own transaction."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def create_tables(metadata: MetaData, *names: str) -> Callable[[Connection], None]:
    """A migration step that creates the named tables (and their indexes) as declared in `metadata`."""

    def _apply(connection: Connection) -> None:
        metadata.create_all(connection, tables=[metadata.tables[name] for name in names])

    return _apply


def add_columns(metadata: MetaData, table: str, *names: str) -> Callable[[Connection], None]:
    """A migration step adding columns (as declared in `metadata`) that the table does not have yet."""

    def _apply(connection: Connection) -> None:
        present = {column["name"] for column in inspect(connection).get_columns(table)}
        for name in names:
            if name in present:
                continue  # the table was created after the column was declared
            column = metadata.tables[table].c[name]
            column_type = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {column_type}'))

    return _apply


_history = MetaData()
_schema_migrations = Table(
    "schema_migrations",
    _history,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration], *, schema: str) -> list[int]:
    """Apply pending migrations; replicas starting together serialise on an advisory lock."""
    async with engine.connect() as connection:
        if is_postgres(engine):
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.execute(select(text(f"pg_advisory_lock({advisory_lock_key('migrate:' + schema)})")))
            await connection.commit()
        try:
            return await _apply_pending(connection, migrations)
        finally:
            if is_postgres(engine):
                key = advisory_lock_key("migrate:" + schema)
                await connection.execute(select(text(f"pg_advisory_unlock({key})")))
                await connection.commit()


async def _apply_pending(connection: Any, migrations: Sequence[Migration]) -> list[int]:
    await connection.run_sync(lambda sync: _history.create_all(sync))
    await connection.commit()
    done = set((await connection.execute(select(_schema_migrations.c.version))).scalars())
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        await connection.run_sync(migration.apply)
        await connection.execute(
            _schema_migrations.insert().values(version=migration.version, name=migration.name, applied_at=utc_now())
        )
        await connection.commit()
        applied.append(migration.version)
    return applied
