"""POST /v1/reps/import: a reps CSV as the request body, stored whole or not at all."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request

from services.routing.reps_import import InvalidRoster, import_reps
from shared.app import UowDep
from shared.auth import AdminDep
from shared.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["reps"])

MAX_BODY_BYTES: Final = 5 * 1024 * 1024
CSV_TYPES: Final = frozenset({"text/csv", "application/csv", "text/plain"})
_CSV_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string"}, "example": "rep_id,name,email,team\n"}},
    }
}


@router.post("/reps/import", openapi_extra=_CSV_BODY)
async def post_reps_import(request: Request, uow: UowDep, _: AdminDep) -> dict[str, int]:
    """Create or replace reps from a CSV (the `baton reps import` format): every row is checked first and one bad
    row stores nothing (422 listing each problem as `row N.field`)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in CSV_TYPES:
        raise ProblemError(415, f"send the reps as text/csv, not {media_type or 'no content type'}")
    text = await _csv_text(request)
    try:
        return await import_reps(uow, text)
    except InvalidRoster as exc:
        raise ProblemError(422, str(exc), errors=[error.as_problem() for error in exc.errors]) from None


async def _csv_text(request: Request) -> str:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ProblemError(413, f"a reps file is at most {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProblemError(422, "the body is not UTF-8; save the file as CSV UTF-8", errors=[
            {"field": "body", "message": "not UTF-8"}]) from None  # fmt: skip
