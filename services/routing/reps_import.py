"""Import a roster of reps from CSV: every row checked first, then all stored in one transaction or none.

The header row names the columns (any order, any case): rep_id, name, email, team, manager, languages, skills,
territories, segments, weight, max_open, max_per_day, timezone, working_hours, out_of_office, active. Only name
and email are required; an empty cell takes the field's default. Rows are numbered as a spreadsheet shows them:
the header is row 1.

- languages, skills, territories, segments: values separated by `;` or `|`, e.g. `en;ja`.
- working_hours: `;`- or `|`-separated entries `<days> <start>-<end>[,<start>-<end>...]`, where days are a
  weekday (`mon`), a range (`mon-fri`, wrapping past sunday) or a comma list (`mon,wed`), and times are `HH:MM`
  (`24:00` may end a day). E.g. `mon-fri 09:00-12:00,13:00-17:00; sat 10:00-14:00`. A day not named is a day
  off. JSON as the API takes it (`{"mon": [["09:00", "17:00"]]}`) is accepted too.
- out_of_office: `;`- or `|`-separated periods `<start>/<end>` with a timezone offset, e.g.
  `2026-12-24T00:00+09:00/2026-12-27T00:00+09:00`.
- A row without rep_id updates the stored rep with its email, if any; otherwise a new rep is created.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import ValidationError

from services.routing import admin, store
from services.routing.reps import WEEKDAYS
from services.routing.schemas import RepIn
from services.routing.settings import Settings
from shared.problems import field_errors
from shared.runtime import standalone_unit_of_work
from shared.uow import UnitOfWork

MAX_REPS: Final = 10_000
LIST_COLUMNS: Final = frozenset({"languages", "skills", "territories", "segments"})
COLUMNS: Final = frozenset(RepIn.model_fields)
_SEPARATORS: Final = re.compile(r"[;|]")
_ENTRY: Final = re.compile(r"^(?P<days>[a-z,\-]+)\s+(?P<spans>\S.*)$")


@dataclass(frozen=True)
class RowError:
    """One problem with the file: its row (the header is row 1), the field and what is wrong."""

    row: int
    field: str
    message: str

    def as_problem(self) -> dict[str, str]:
        """As an entry of a problem document's `errors`: {"field": "row 3.email", "message": ...}."""
        return {"field": f"row {self.row}.{self.field}", "message": self.message}


class InvalidRoster(ValueError):
    """The file has bad rows; nothing was stored."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the file; nothing was imported")
        self.errors = errors


# --- parsing ---------------------------------------------------------------------------------------------------------


def parse_reps_csv(text: str) -> list[RepIn]:
    """Every data row of a reps CSV as a RepIn; raises InvalidRoster listing every bad row if any is bad."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))  # Excel starts its UTF-8 CSVs with a BOM
    try:
        columns = _columns(next(reader, []))
        rows = list(enumerate(reader, start=2))
    except csv.Error as exc:
        raise InvalidRoster([RowError(reader.line_num, "row", f"not valid CSV: {exc}")]) from None
    if len(rows) > MAX_REPS:
        raise InvalidRoster([RowError(MAX_REPS + 2, "row", f"at most {MAX_REPS} reps per file")])
    reps: list[RepIn] = []
    errors: list[RowError] = []
    rows = [(number, cells) for number, cells in rows if any(cell.strip() for cell in cells)]  # skip blank lines
    for number, cells in rows:
        rep = _rep_or_errors(number, cells, columns)
        if isinstance(rep, RepIn):
            reps.append(rep)
        else:
            errors.extend(rep)
    errors.extend(_duplicates(rows, columns))
    if errors:
        raise InvalidRoster(sorted(errors, key=lambda error: error.row))
    return reps


def _columns(header: list[str]) -> list[str]:
    columns = [cell.strip().lower() for cell in header]
    errors = [RowError(1, column, "unknown column") for column in columns if column and column not in COLUMNS]
    errors += [RowError(1, name, "duplicate column") for name in sorted(COLUMNS) if columns.count(name) > 1]
    errors += [RowError(1, name, "the header must name this column") for name in ("name", "email")
               if name not in columns]  # fmt: skip
    if errors:
        raise InvalidRoster(errors)
    return columns


def _rep_or_errors(number: int, cells: list[str], columns: list[str]) -> RepIn | list[RowError]:
    if len(cells) > len(columns) and any(cell.strip() for cell in cells[len(columns) :]):
        return [RowError(number, "row", f"{len(cells)} cells but the header names {len(columns)} columns")]
    fields: dict[str, Any] = {}
    errors: list[RowError] = []
    for column, cell in zip(columns, cells, strict=False):
        if column and cell.strip():
            try:
                fields[column] = _cell_value(column, cell.strip())
            except ValueError as exc:
                errors.append(RowError(number, column, str(exc)))
    try:
        rep = RepIn.model_validate(fields)
    except ValidationError as exc:
        failed = {error.field for error in errors}
        problems = field_errors(exc.errors(include_url=False))
        errors += [RowError(number, item["field"], item["message"]) for item in problems if item["field"] not in failed]
    return errors if errors else rep


def _cell_value(column: str, cell: str) -> Any:
    if column in LIST_COLUMNS:
        return split_list(cell)
    if column == "working_hours":
        return parse_working_hours(cell)
    if column == "out_of_office":
        return parse_out_of_office(cell)
    return cell


def split_list(cell: str) -> list[str]:
    """`en; ja|fr` as ["en", "ja", "fr"]."""
    return [part.strip() for part in _SEPARATORS.split(cell) if part.strip()]


def parse_working_hours(cell: str) -> dict[str, list[list[str]]]:
    """`mon-fri 09:00-17:00; sat 10:00-14:00` (or the API's JSON) as {"mon": [["09:00", "17:00"]], ...}."""
    if cell.startswith("{"):
        try:
            given: dict[str, list[list[str]]] = orjson.loads(cell)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        return given  # RepIn checks its shape
    week: dict[str, list[list[str]]] = {}
    for entry in split_list(cell):
        match = _ENTRY.match(entry.lower())
        if match is None:
            raise ValueError(f"{entry!r} is not '<days> <start>-<end>', e.g. 'mon-fri 09:00-17:00'")
        spans = [_span(span) for span in match["spans"].replace(" ", "").split(",") if span]
        for day in _days(match["days"]):
            week.setdefault(day, []).extend(spans)
    return week


def _days(text: str) -> list[str]:
    days: list[str] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        for day in (first, last or first):
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r}: use {', '.join(WEEKDAYS)}")
        start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        days += [WEEKDAYS[(start + step) % 7] for step in range((end - start) % 7 + 1)]
    return days


def _span(text: str) -> list[str]:
    start, dash, end = text.partition("-")
    if not dash or not re.fullmatch(r"\d{2}:\d{2}", start) or not re.fullmatch(r"\d{2}:\d{2}", end):
        raise ValueError(f"{text!r} is not a time span 'HH:MM-HH:MM', e.g. '09:00-17:00'")
    return [start, "00:00" if end == "24:00" else end]


def parse_out_of_office(cell: str) -> list[dict[str, str]]:
    """`<start>/<end>; <start>/<end>` as [{"start": ..., "end": ...}] (RepIn checks the times)."""
    periods = []
    for period in split_list(cell):
        start, slash, end = period.partition("/")
        if not slash or not start.strip() or not end.strip():
            raise ValueError(f"{period!r} is not '<start>/<end>', e.g. 2026-12-24T00:00+09:00/2026-12-27T00:00+09:00")
        periods.append({"start": start.strip(), "end": end.strip()})
    return periods


def _duplicates(rows: list[tuple[int, list[str]]], columns: list[str]) -> list[RowError]:
    errors: list[RowError] = []
    for field in ("rep_id", "email"):
        if field not in columns:
            continue
        position, first_row = columns.index(field), dict[str, int]()
        for number, cells in rows:
            value = cells[position].strip() if position < len(cells) else ""
            value = value.lower() if field == "email" else value  # ids are case-sensitive, emails are not
            if value and value in first_row:
                errors.append(RowError(number, field, f"{value} is also on row {first_row[value]}"))
            first_row.setdefault(value, number)
    return errors


# --- storing ---------------------------------------------------------------------------------------------------------


async def import_reps(uow: UnitOfWork, text: str) -> dict[str, int]:
    """Check a reps CSV and store it whole (or nothing); counts created and updated. Raises InvalidRoster."""
    reps = parse_reps_csv(text)
    async with uow.read() as session:
        known = {str(row["email"]).lower(): str(row["rep_id"]) for row in await store.list_reps(session)}
    # Re-importing a file without rep_ids updates the same reps instead of failing on their emails.
    reps = [rep if rep.rep_id else rep.model_copy(update={"rep_id": known.get(str(rep.email).lower())}) for rep in reps]
    return await admin.save_reps(uow, reps)


async def import_reps_file(settings: Settings, text: str) -> dict[str, int]:
    """`baton reps import PATH`: the file's text imported on routing's database directly."""
    async with standalone_unit_of_work(settings, metadata=store.metadata, migrations=store.MIGRATIONS) as uow:
        return await import_reps(uow, text)
