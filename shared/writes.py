"""Blind writes that travel together: a transaction's inserts, upserts and updates kept until it next talks to the
database, then sent as one statement.

On PostgreSQL `write_rows` and `update_rows` send nothing: they keep the write with the session. The next statement
the session runs (a hook on the session), or `send_writes` before a commit, first sends every write kept, as the
data-modifying parts of one statement (`WITH w0 AS (INSERT ...), w1 AS (UPDATE ...) SELECT ...`). A run of routed
leads thus writes its assignments, decisions, stream events, turns and outbox rows in one round trip instead of one
each: on a busy machine every round trip waits for the server's process and back.

What a caller sees does not change:
- the writes belong to the transaction that kept them; one that fails fails the statement that sends it (a read, or
  the commit), and with it the transaction;
- nothing the session runs overtakes a write kept before it, so every read sees the writes before it;
- parts of one statement neither see each other's rows nor run in a set order, so two writes to one table never go
  together: a second insert of the same shape joins the first (one array of rows, in order), any other sends what is
  kept first;
- each write that returns rows gets its own (with several in one statement, they come back as JSON, so returned
  columns must be of types JSON keeps: text and integers).

A checked write (`write_checked`) is a compare-and-set kept the same way: it must change one row per row given, or
the statement sending it fails as a constraint does (IntegrityError), rolling back all the transaction did. Work
decided on reads without locks writes with it: when another writer changed what was read, the work fails whole
instead of overwriting, and is done again under locks. Checked writes are compared first, in the order they were
kept, before the statement's other writes run.

On SQLite every write runs at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Executable, Row, Table, TextClause, bindparam, text, update

from shared.db import column_arrays, record_type, unnest_arrays, unnest_columns
from shared.sessions import DbSession

_KEPT = "baton.kept_writes"

OnRows = Callable[[Sequence[Sequence[Any]]], None]


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a kept write's SQL depends on: built once per shape and position."""

    table: Table
    columns: tuple[str, ...]
    replace: tuple[str, ...] | None = None  # insert: on a primary key already there, replace these columns
    add: tuple[str, ...] | None = None  # insert: on a primary key already there, add to these columns
    key: tuple[str, ...] | None = None  # update: the rows to change, by these columns
    returning: tuple[str, ...] = ()
    sparse: bool = False  # the rows travel as one JSON document (`:{prefix}rows`); an `add` column left out adds 0

    def sql(self, prefix: str) -> str:
        if self.sparse:
            return self._sparse_sql(prefix)
        arrays = unnest_arrays(self.table, self.columns, prefix=prefix)
        given = unnest_columns(self.table, self.columns)
        names = ", ".join(self.columns)
        if self.key is not None:
            changed = ", ".join(
                f"{name} = {value}" for name, value in zip(self.columns, given, strict=True) if name not in self.key
            )
            matched = " AND ".join(f"{self.table.name}.{name} = given.{name}" for name in self.key)
            sql = f"UPDATE {self.table.name} SET {changed} FROM unnest({arrays}) AS given({names}) WHERE {matched}"
        else:
            sql = (
                f"INSERT INTO {self.table.name} ({names}) SELECT {', '.join(given)} FROM unnest({arrays}) "
                f"WITH ORDINALITY AS given({names}, position) ORDER BY position"
            )
            sql += _on_conflict(self.table, self.replace, self.add)
        if self.returning:
            sql += f" RETURNING {', '.join(self.returning)}"
        return sql

    def _sparse_sql(self, prefix: str) -> str:
        names = ", ".join(self.columns)
        typed = ", ".join(f"{name} {record_type(self.table, name)}" for name in self.columns)
        given = ", ".join(f"coalesce(given.{name}, 0)" if name in (self.add or ()) else f"given.{name}"
                          for name in self.columns)  # fmt: skip
        return (
            f"INSERT INTO {self.table.name} ({names}) SELECT {given} "
            f"FROM ROWS FROM (jsonb_to_recordset(CAST(:{prefix}rows AS jsonb)) AS ({typed})) "
            f"WITH ORDINALITY AS given({names}, position) ORDER BY position"
            + _on_conflict(self.table, self.replace, self.add)
        )


@dataclass(frozen=True, slots=True)
class CheckedWrite:
    """A compare-and-set on `table`: `template` is a data-modifying statement whose array parameters are written
    `:{p}name` (one array per parameter, one element per row), changing at most one row per row given. Sent with
    `write_checked`; the schema needs the check `create_unchanged_check` makes."""

    table: Table
    template: str
    returning: tuple[str, ...] = ()

    def sql(self, prefix: str) -> str:
        return self.template.replace(":{p}", f":{prefix}") + " RETURNING 1"


# What a failed comparison casts to: a PostgreSQL domain whose check fails (SQLSTATE 23514, a check violation).
UNCHANGED = "unchanged_since_read"


def create_unchanged_check(connection: Connection) -> None:
    """Migration step: the check that checked writes (`write_checked`) fail on, in the service's schema."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"CREATE DOMAIN {UNCHANGED} AS boolean CHECK (VALUE)"))


@dataclass(slots=True)
class _Write:
    shape: _Shape | CheckedWrite
    params: dict[str, Any]  # an array per column (a JSON document for sparse rows)
    on_rows: list[OnRows] = field(default_factory=list)

    def joins(self, other: _Write) -> bool:
        """`other` can be added to this write's rows: plain inserts of the same shape (an upsert's rows could share a
        key, which one statement cannot change twice)."""
        shape = self.shape
        if not isinstance(shape, _Shape):
            return False
        plain = shape.replace is None and shape.add is None and shape.key is None
        return other.shape == shape and plain

    def join(self, other: _Write) -> None:
        for name, values in other.params.items():
            self.params[name] = self.params[name] + values
        self.on_rows.extend(other.on_rows)


async def write_rows(
    session: DbSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    replace: Sequence[str] | None = None,
    add: Sequence[str] | None = None,
    returning: Sequence[str] = (),
    on_rows: OnRows | None = None,
) -> None:
    """Insert `rows` (one shape) into `table`, in order. A row whose primary key is already there instead replaces
    the columns in `replace` and adds its values to those in `add` (with either, no two rows may share a key).
    `on_rows` gets the `returning` columns of the rows written (or of more rows: those of other writes of this shape
    sent with them)."""
    if not rows:
        return
    columns = tuple(rows[0])
    replaced = None if replace is None else tuple(replace)
    added = None if add is None else tuple(add)
    if not _on_postgres(session):
        upsert = replaced is not None or added is not None
        statement: Executable = _sqlite_upsert(table, columns, replaced, added) if upsert else table.insert()
        if returning:
            if replaced is not None or added is not None:
                raise ValueError("on SQLite an upsert returns no rows")
            statement = table.insert().returning(*(table.c[name] for name in returning))
        result = await session.execute(statement, [dict(row) for row in rows])
        if on_rows is not None:
            on_rows(result.all())
        return
    shape = _Shape(table, columns, replace=replaced, add=added, returning=tuple(returning))
    await _keep(session, _Write(shape, column_arrays(table, rows, columns), [on_rows] if on_rows else []))


async def add_to_rows(
    session: DbSession, table: Table, rows: Sequence[Mapping[str, Any]], *, add: Sequence[str]
) -> None:
    """Insert `rows` into `table`, in order, or add their amounts to the `add` columns of the row with their primary
    key (no two rows may share one). A row gives its primary key and the amounts it adds: an `add` column it leaves
    out adds 0, and other columns take their defaults.

    For wide tables of running totals where each write moves a few (feedback's report cells: 63 metrics, a handful
    moving per cell): on PostgreSQL the rows travel as one JSON document of what they give, not as an array per
    column of mostly zeros, which the driver checks and encodes value by value."""
    if not rows:
        return
    key = tuple(column.name for column in table.primary_key.columns)
    added = tuple(add)
    columns = (*key, *added)
    unknown = {name for row in rows for name in row} - set(columns)
    if unknown:
        raise ValueError(f"not primary key or added columns of {table.name}: {sorted(unknown)}")
    if not _on_postgres(session):
        await write_rows(session, table, [{name: row.get(name, 0) for name in columns} for row in rows], add=added)
        return
    shape = _Shape(table, columns, add=added, sparse=True)
    await _keep(session, _Write(shape, {"rows": orjson.dumps(list(rows), default=_json_amount).decode()}))


def _json_amount(value: Any) -> str:
    # Decimal amounts as JSON strings: PostgreSQL reads them into NUMERIC exactly.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not an amount")


async def update_rows(
    session: DbSession, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str]
) -> None:
    """Set the other columns of `rows` (one shape) on the rows of `table` matching their `key` columns."""
    if not rows:
        return
    columns, matched = tuple(rows[0]), tuple(key)
    if not _on_postgres(session):
        statement = (
            update(table)
            .where(*(table.c[name] == bindparam(f"key_{name}") for name in matched))
            .values({name: bindparam(f"new_{name}") for name in columns if name not in matched})
        )
        await session.execute(
            statement,
            [{f"{'key' if name in matched else 'new'}_{name}": row[name] for name in columns} for row in rows],
        )
        return
    await _keep(session, _Write(_Shape(table, columns, key=matched), column_arrays(table, rows, columns)))


async def write_checked(session: DbSession, write: CheckedWrite, params: Mapping[str, Sequence[Any]]) -> None:
    """Keep `write` with `params` (arrays of one length: the rows given, none: nothing to write); the statement
    sending it fails with an IntegrityError unless it changes one row for each. PostgreSQL only."""
    if not _on_postgres(session):
        raise TypeError("checked writes are kept on PostgreSQL only")
    arrays = {name: list(values) for name, values in params.items()}
    lengths = {len(values) for values in arrays.values()}
    if len(lengths) != 1:
        raise ValueError("a checked write's parameters are arrays of one length")
    if lengths != {0}:
        await _keep(session, _Write(write, arrays))


async def send_writes(session: DbSession) -> None:
    """Send the writes kept so far (before a commit: the session runs nothing else that would)."""
    kept: list[_Write] | None = session.info.pop(_KEPT, None)
    session.before_next_statement = None
    if kept:
        statement, params = _statement(kept)
        _deliver(kept, (await session.execute(statement, params)).all())


async def _keep(session: DbSession, write: _Write) -> None:
    kept: list[_Write] = session.info.setdefault(_KEPT, [])
    same_table = next((other for other in kept if other.shape.table is write.shape.table), None)
    if same_table is not None and same_table.joins(write):
        same_table.join(write)
        return
    if same_table is not None:
        await send_writes(session)
        kept = session.info.setdefault(_KEPT, [])
    kept.append(write)
    # Whatever the session runs next, the writes it kept go first.
    session.before_next_statement = send_writes


def _statement(kept: Sequence[_Write]) -> tuple[TextClause, dict[str, Any]]:
    params: dict[str, Any] = {
        f"w{index}_{name}": values for index, write in enumerate(kept) for name, values in write.params.items()
    }
    for index, write in enumerate(kept):
        if isinstance(write.shape, CheckedWrite):
            params[f"w{index}__expected"] = len(next(iter(write.params.values()), []))
    return _combined(tuple(write.shape for write in kept)), params


@functools.lru_cache(maxsize=256)
def _combined(shapes: tuple[_Shape | CheckedWrite, ...]) -> TextClause:
    """One statement for writes of these shapes, in this order. Its rows are those of the one write that returns
    any; with several, (write's position, row as JSON) for each. Checked writes are counted by a condition on the
    whole statement (evaluated once, before the rows are read, in the order they were kept); failing, it casts
    false to the domain whose check fails."""
    parts = ", ".join(f"w{index} AS ({shape.sql(f'w{index}_')})" for index, shape in enumerate(shapes))
    returning = [index for index, shape in enumerate(shapes) if shape.returning]
    if len(returning) > 1:
        result = " UNION ALL ".join(f"SELECT {index}, to_jsonb(w{index})::text FROM w{index}" for index in returning)
    else:
        result = f"SELECT * FROM w{returning[0]}" if returning else "SELECT 1"
    checked = [index for index, shape in enumerate(shapes) if isinstance(shape, CheckedWrite)]
    if checked:
        holds = " AND ".join(f"(SELECT count(*) FROM w{index}) = :w{index}__expected" for index in checked)
        result = f"SELECT * FROM ({result}) AS written WHERE CAST({holds} AS {UNCHANGED})"
    return text(f"WITH {parts} {result}")


def _deliver(kept: Sequence[_Write], rows: Sequence[Row[Any]]) -> None:
    returning = [index for index, write in enumerate(kept) if write.shape.returning]
    for index, write in enumerate(kept):
        if len(returning) > 1 and index in returning:
            names = write.shape.returning
            written: list[tuple[Any, ...]] = [tuple(values[name] for name in names) for at, row in rows if at == index
                       for values in (orjson.loads(row),)]  # fmt: skip
        else:
            written = [tuple(row) for row in rows] if write.shape.returning else []
        for on_rows in write.on_rows:
            on_rows(written)


def _on_postgres(session: DbSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _on_conflict(table: Table, replaced: tuple[str, ...] | None, added: tuple[str, ...] | None) -> str:
    """What an insert does on a primary key already there (nothing special without columns to replace or add)."""
    primary_key = ", ".join(column.name for column in table.primary_key.columns)
    if replaced is None and added is None:
        return ""
    moved = [f"{name} = excluded.{name}" for name in replaced or ()]
    moved += [f"{name} = {table.name}.{name} + excluded.{name}" for name in added or ()]
    return f" ON CONFLICT ({primary_key}) DO UPDATE SET {', '.join(moved)}"


@functools.lru_cache(maxsize=64)
def _sqlite_upsert(
    table: Table,
    columns: tuple[str, ...],
    replaced: tuple[str, ...] | None,
    added: tuple[str, ...] | None,
) -> TextClause:
    # Plain SQL with typed parameters, built once per shape: SQLAlchemy gives its dialect-specific ON CONFLICT
    # construct no cache key, so it would compile that afresh on every call.
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(f':{name}' for name in columns)})"
        + _on_conflict(table, replaced, added)
    ).bindparams(*(bindparam(name, type_=table.c[name].type) for name in columns))
