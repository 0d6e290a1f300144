"""POST /v1/leads/import: a CSV body streamed through the same validation and dedupe as POST /v1/leads."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from services.lead_intake.access import IMPORT_LEADS
from services.lead_intake.importer import CsvRefused, RowError, import_rows, read_csv
from shared.app import UowDep
from shared.auth import Principal, require
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["leads"])
log = logging.getLogger(__name__)

CSV_CONTENT_TYPE: Final = "text/csv"
REPORTED_ERRORS: Final = 100
BATCH_SIZE: Final = 500


class RejectedRow(BaseModel):
    """A row that was not imported: its line in the file (the header is line 1), its email, what is wrong."""

    line: int
    email: str | None
    errors: list[dict[str, str]]


class ImportReport(BaseModel):
    """What an import did; only the first rejected rows are listed."""

    rows: int
    captured: int
    merged: int
    unchanged: int
    rejected: int
    errors: list[RejectedRow]
    errors_truncated: bool


@router.post(
    "/leads/import",
    response_model=ImportReport,
    openapi_extra={"requestBody": {"required": True, "content": {CSV_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def import_leads(
    request: Request, uow: UowDep, _: Annotated[Principal, Depends(require(IMPORT_LEADS))]
) -> ImportReport:
    """Import a UTF-8 CSV of leads (header row with an email column); re-sending the same file changes nothing."""
    _require_csv(request.headers.get("content-type", ""))
    rejected: list[RowError] = []

    def keep(error: RowError) -> None:
        if len(rejected) < REPORTED_ERRORS:
            rejected.append(error)

    try:
        summary = await import_rows(uow, read_csv(request.stream()), batch_size=BATCH_SIZE, on_error=keep)
    except CsvRefused as exc:
        raise ProblemError(422, str(exc), errors=[{"field": exc.field, "message": str(exc)}]) from exc
    log.info("lead import done", extra={"import": asdict(summary)})
    return ImportReport(
        rows=summary.rows,
        captured=summary.captured,
        merged=summary.merged,
        unchanged=summary.unchanged,
        rejected=summary.rejected,
        errors=[RejectedRow(line=error.line, email=error.email, errors=error.errors) for error in rejected],
        errors_truncated=summary.rejected > len(rejected),
    )


def _require_csv(content_type_header: str) -> None:
    media_type, *parameters = (part.strip().lower() for part in content_type_header.split(";"))
    charset = next((p.partition("=")[2].strip('" ') for p in parameters if p.startswith("charset=")), "utf-8")
    if media_type != CSV_CONTENT_TYPE or charset not in ("utf-8", "utf8"):
        raise ProblemError(415, f"unsupported content type {content_type_header!r}; send text/csv in UTF-8")
