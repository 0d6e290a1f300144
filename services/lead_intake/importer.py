"""Bulk import: CSV rows through the same validation and dedupe as POST /v1/leads, streamed, never all in memory."""

from __future__ import annotations

import csv
import functools
import os
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from services.lead_intake import store
from services.lead_intake.domain import Lead
from services.lead_intake.service import capture_leads, new_lead_id
from services.lead_intake.settings import Settings
from services.lead_intake.submission import LeadSubmission
from shared.problems import field_errors
from shared.runtime import standalone_unit_of_work
from shared.uow import UnitOfWork

MAX_ROW_BYTES: Final = 64 * 1024
CHUNK_BYTES: Final = 64 * 1024
PROGRESS_SECONDS: Final = 0.2
ERROR_COLUMNS: Final = ("line", "email", "errors")
# A CSV cell is text: `attributes` is not a column of its own but where unknown columns go.
_COLUMN_FIELDS: Final = frozenset(LeadSubmission.model_fields) - {"attributes"}
_QUOTE, _COMMA, _NEWLINE = b'"', b",", b"\n"

T = TypeVar("T")


class CsvRefused(ValueError):
    """The file as a whole cannot be imported (no email column, unreadable header); `field` names the culprit."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Unreadable:
    """A data row that could not even be read as CSV cells (too long, not UTF-8, more cells than columns)."""

    reason: str


CsvRow = Mapping[str, str] | Unreadable


@dataclass(frozen=True)
class RowError:
    """A rejected row: its line (the header is line 1), its email if it had one, and every problem with it."""

    line: int
    email: str | None
    errors: list[dict[str, str]]


@dataclass(frozen=True)
class ImportSummary:
    """What an import did, counted in data rows."""

    rows: int
    captured: int
    merged: int
    unchanged: int
    rejected: int
    seconds: float


# --- CSV columns to submission fields ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def field_of_column(column: str) -> str | None:
    """The submission field a CSV column fills ("Email", " first name " → email, first_name); None if unknown."""
    name = "_".join(column.strip().lower().replace("-", " ").split())
    return name if name in _COLUMN_FIELDS else None


def submission_fields(row: Mapping[str, str]) -> dict[str, Any]:
    """A CSV row as submission fields: `interests` split on `,` or `;`, unknown columns become attributes."""
    fields: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for column, value in row.items():
        name = field_of_column(column)
        if name == "interests":
            fields[name] = [part for part in value.replace(";", ",").split(",") if part.strip()]
        elif name is not None:
            fields[name] = value
        elif column.strip() and value.strip():
            attributes[column.strip()] = value
    if attributes:
        fields["attributes"] = attributes
    return fields


def columns_of(header: list[str]) -> list[str]:
    """The header's column names, checked: an email column is required and no field may appear twice."""
    columns = [cell.strip() for cell in header]
    seen: dict[str, str] = {}
    for column in columns:
        key = field_of_column(column) or column.lower()
        if column and key in seen:
            raise CsvRefused(f"columns {seen[key]!r} and {column!r} both give {key!r}", field=key)
        seen[key] = column
    if "email" not in seen:
        raise CsvRefused("the CSV has no email column; its header row must name one", field="email")
    return columns


# --- streaming CSV -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oversized:
    """A record longer than the row limit, dropped as it streamed past."""

    size: int


class RecordSplitter:
    """Cuts CSV bytes into complete records however they arrive in chunks; newlines inside quoted fields stay in.

    Works on bytes because in UTF-8 a quote, comma or newline byte is always that character. Follows the csv
    module's reading of the excel dialect, so both agree on where a record ends.
    """

    _FIELD_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = range(4)

    def __init__(self, *, limit: int = MAX_ROW_BYTES) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._state = self._FIELD_START

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        """The records completed by `chunk`."""
        records: list[bytes | Oversized] = []
        start = 0
        while start < len(chunk):
            end = self._record_end(chunk, start)
            self._keep(chunk[start : end if end >= 0 else len(chunk)])
            if end < 0:
                break
            records.append(self._complete())
            start = end
        return records

    def finish(self) -> list[bytes | Oversized]:
        """The last record, when the data does not end with a newline."""
        return [self._complete()] if self._size else []

    def _keep(self, part: bytes) -> None:
        self._size += len(part)
        if self._size <= self._limit:
            self._parts.append(part)
        else:
            self._parts.clear()  # bounded memory: the row is rejected anyway

    def _complete(self) -> bytes | Oversized:
        record = b"".join(self._parts) if self._size <= self._limit else Oversized(self._size)
        self._parts, self._size, self._state = [], 0, self._FIELD_START
        return record

    def _record_end(self, data: bytes, position: int) -> int:
        """Advance the quoting state over data[position:]; the index after the newline ending a record, or -1."""
        size = len(data)
        while position < size:
            state = self._state
            if state == self._QUOTED:
                quote = data.find(_QUOTE, position)
                if quote < 0:
                    return -1
                self._state, position = self._QUOTE_IN_QUOTED, quote + 1
            elif state == self._QUOTE_IN_QUOTED:
                escaped = data[position] == _QUOTE[0]  # "" inside quotes; else the quote closed the field
                self._state, position = (self._QUOTED, position + 1) if escaped else (self._UNQUOTED, position)
            elif state == self._FIELD_START:
                newline = data.find(_NEWLINE, position)
                if newline >= 0 and data.find(_QUOTE, position, newline) < 0:
                    return newline + 1  # the common case: nothing quoted in the rest of the line
                quoted = data[position] == _QUOTE[0]
                self._state, position = (self._QUOTED, position + 1) if quoted else (self._UNQUOTED, position)
            else:
                newline, comma = data.find(_NEWLINE, position), data.find(_COMMA, position)
                if newline >= 0 and (comma < 0 or newline < comma):
                    self._state = self._FIELD_START
                    return newline + 1
                if comma < 0:
                    return -1
                self._state, position = self._FIELD_START, comma + 1
        return -1


async def read_csv(chunks: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[CsvRow]:
    """The data rows of a UTF-8 CSV arriving in chunks, by column name; the header is checked before any row."""
    splitter, columns = RecordSplitter(), None
    async for chunk in _each(chunks):
        for record in splitter.feed(chunk):
            if columns is None:
                columns = _header(record)
            else:
                yield _row(record, columns)
    for record in splitter.finish():
        if columns is None:
            columns = _header(record)
        else:
            yield _row(record, columns)
    if columns is None:
        raise CsvRefused("the CSV is empty; its header row must name an email column", field="email")


def _header(record: bytes | Oversized) -> list[str]:
    if isinstance(record, Oversized):
        raise CsvRefused(f"the header row is longer than {MAX_ROW_BYTES} bytes", field="header")
    try:
        text = record.decode("utf-8").removeprefix("\ufeff")  # Excel starts its UTF-8 CSVs with a BOM
        header = next(csv.reader([text]), [])
    except UnicodeDecodeError:
        raise CsvRefused("the header row is not UTF-8; save the file as CSV UTF-8", field="header") from None
    except csv.Error:
        raise CsvRefused("the header row is not CSV; lines must end with LF or CRLF", field="header") from None
    return columns_of(header)


def _row(record: bytes | Oversized, columns: list[str]) -> CsvRow:
    if isinstance(record, Oversized):
        return Unreadable(f"row of {record.size} bytes is longer than the limit of {MAX_ROW_BYTES}")
    try:
        cells = next(csv.reader([record.decode("utf-8")]), [])
    except UnicodeDecodeError:
        return Unreadable("row is not valid UTF-8; save the file as CSV UTF-8")
    except csv.Error as exc:
        return Unreadable(f"row is not valid CSV: {exc}")
    if any(cell.strip() for cell in cells[len(columns) :]):
        return Unreadable(f"row has {len(cells)} cells but the header names {len(columns)} columns")
    return {column: cell for column, cell in zip(columns, cells, strict=False) if column}


async def _each(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


# --- importing ---------------------------------------------------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts = {"rows": 0, "captured": 0, "merged": 0, "unchanged": 0, "rejected": 0}

    def summary(self) -> ImportSummary:
        return ImportSummary(**self.counts, seconds=time.monotonic() - self.started)


async def import_rows(
    uow: UnitOfWork,
    rows: Iterable[CsvRow] | AsyncIterable[CsvRow],
    *,
    batch_size: int = 500,
    on_progress: Callable[[ImportSummary], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
) -> ImportSummary:
    """Validate each row as POST /v1/leads does and capture the valid ones `batch_size` per transaction.

    Blank rows are skipped; a rejected row goes to `on_error`. Re-importing the same rows changes nothing.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tally, batch, line = _Tally(), list[Lead](), 1
    async for row in _each(rows):
        line += 1
        if not isinstance(row, Unreadable) and not any(value.strip() for value in row.values()):
            continue
        tally.counts["rows"] += 1
        lead = _lead_or_error(row, line)
        if isinstance(lead, RowError):
            tally.counts["rejected"] += 1
            if on_error is not None:
                on_error(lead)
            continue
        batch.append(lead)
        if len(batch) >= batch_size:
            await _capture(uow, batch, tally, on_progress)
    await _capture(uow, batch, tally, on_progress)
    return tally.summary()


def _lead_or_error(row: CsvRow, line: int) -> Lead | RowError:
    if isinstance(row, Unreadable):
        return RowError(line, None, [{"field": "row", "message": row.reason}])
    fields = submission_fields(row)
    try:
        return LeadSubmission.model_validate(fields).to_lead(new_lead_id())
    except ValidationError as exc:
        email = str(fields.get("email", "")).strip() or None
        return RowError(line, email, field_errors(exc.errors(include_url=False)))


async def _capture(
    uow: UnitOfWork, batch: list[Lead], tally: _Tally, on_progress: Callable[[ImportSummary], None] | None
) -> None:
    if batch:
        try:
            results = await capture_leads(uow, batch)
        except IntegrityError:
            # A form stored one of these emails between our lookup and insert; the retry merges into it.
            results = await capture_leads(uow, batch)
        for _, status in results:
            tally.counts[status] += 1
        batch.clear()
    if on_progress is not None:
        on_progress(tally.summary())


# --- the command line: a file in, progress on stderr, rejected rows to a file ------------------------------------


async def import_csv_file(
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    errors_path: str | os.PathLike[str] | None = None,
    batch_size: int = 500,
) -> ImportSummary:
    """Import a CSV file of leads; rejected rows go to `<path>.errors.csv` (only written if there are any)."""
    source = Path(path)
    errors_file = _ErrorFile(Path(errors_path) if errors_path else source.with_name(source.name + ".errors.csv"))
    reader = _FileReader(source)
    progress = _ProgressLine(reader, sys.stderr)
    try:
        async with standalone_unit_of_work(settings, metadata=store.metadata, migrations=store.MIGRATIONS) as uow:
            summary = await import_rows(
                uow, read_csv(reader.chunks()), batch_size=batch_size, on_progress=progress, on_error=errors_file.add
            )
        progress(summary, final=True)
    finally:
        errors_file.close()
        progress.done()
    print(_summary_line(source, summary, errors_file.path if summary.rejected else None))
    return summary


def _summary_line(source: Path, summary: ImportSummary, errors: Path | None) -> str:
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    rejected = f"{summary.rejected} rejected" + (f" (see {errors})" if errors else "")
    return (
        f"{source}: {summary.rows} rows: {summary.captured} captured, {summary.merged} merged, "
        f"{summary.unchanged} unchanged, {rejected} in {summary.seconds:.1f} s ({rate:.0f} rows/s)"
    )


class _FileReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.read = 0

    def chunks(self) -> Iterator[bytes]:
        with self.path.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                self.read += len(chunk)
                yield chunk


class _ErrorFile:
    """Rejected rows as CSV; opened on the first one, so a clean import leaves no file (nor a stale one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._writer: Any = None
        path.unlink(missing_ok=True)

    def add(self, error: RowError) -> None:
        if self._file is None:
            self._file = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(ERROR_COLUMNS)
        problems = "; ".join(f"{problem['field']}: {problem['message']}" for problem in error.errors)
        self._writer.writerow((error.line, error.email or "", problems))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _ProgressLine:
    """One stderr line rewritten in place (at most five times a second): share of the file read, rows/s."""

    def __init__(self, reader: _FileReader, stream: TextIO) -> None:
        self._reader = reader
        self._stream = stream
        self._shown_at = 0.0
        self._shown_rows: int | None = None

    def __call__(self, summary: ImportSummary, *, final: bool = False) -> None:
        now = time.monotonic()
        if (now - self._shown_at < PROGRESS_SECONDS and not final) or summary.rows == self._shown_rows:
            return
        self._shown_at, self._shown_rows = now, summary.rows
        share = 100.0 * self._reader.read / self._reader.size if self._reader.size else 100.0
        rate = summary.rows / summary.seconds if summary.seconds else 0.0
        self._stream.write(f"\r{share:5.1f}%  {summary.rows} rows  {rate:.0f} rows/s  ")
        self._stream.flush()

    def done(self) -> None:
        if self._shown_rows is not None:
            self._stream.write("\n")
            self._stream.flush()
