"""HTTP routes of reports: funnel, speed, revenue, competitors, calibration and recycling, as JSON or CSV."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NoReturn

from fastapi import APIRouter, Header, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.feedback import report_store, reports
from services.feedback.reports import ReportQueryError
from shared.app import UowDep
from shared.auth import PrincipalDep

router = APIRouter(prefix="/v1", tags=["reports"])

CSV_MEDIA_TYPE = "text/csv"


def invalid_query(error: ReportQueryError) -> NoReturn:
    """Answer 422 problem+json naming the field, as every validation error does."""
    location = "path" if error.field == "report" else "query"
    raise RequestValidationError([{"loc": (location, error.field), "msg": error.message, "type": "value_error"}])


@router.get("/reports/{report}", response_model=None)
async def get_report(
    report: str,
    uow: UowDep,
    _: PrincipalDep,
    day_from: Annotated[str | None, Query(alias="from", description="first capture day, YYYY-MM-DD")] = None,
    day_to: Annotated[str | None, Query(alias="to", description="last capture day, YYYY-MM-DD")] = None,
    group_by: Annotated[str, Query(description="a report dimension")] = "all",
    output: Annotated[Literal["json", "csv"] | None, Query(alias="format")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """A report over capture days [from, to] (the last 30 days by default), grouped by a dimension."""
    try:
        reports.check_report(report, group_by)
        start, end = reports.day_range(day_from, day_to, today=datetime.now(UTC).date())
    except ReportQueryError as error:
        invalid_query(error)
    cells: dict[str, Any] = {}
    async with uow.read() as session:
        for dimension in reports.dimensions_needed(report, group_by):
            cells[dimension] = await report_store.summed_cells(
                session, dimension=dimension, day_from=start.isoformat(), day_to=end.isoformat()
            )
    body = reports.build_report(report, group_by=group_by, day_from=start, day_to=end, cells=cells)
    if output == "csv" or (output is None and CSV_MEDIA_TYPE in (accept or "")):
        return _csv(body)
    return JSONResponse(body)


def _csv(body: dict[str, Any]) -> Response:
    filename = f"{body['report']}_{body['from']}_{body['to']}.csv"
    return Response(
        reports.to_csv(body),
        media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
