"""RFC 9457 problem details for every error a service returns."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.failures import is_outage

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5

log = logging.getLogger(__name__)


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers
        self.extensions = extensions


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json response; `type` stays about:blank so `title` is the HTTP status phrase."""
    body = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status, "detail": detail}
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


def field_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic errors as [{field, message}], the field as a dotted path without the body/query prefix."""
    result = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header"):
            location = location[1:]
        result.append({"field": ".".join(location) or "body", "message": str(error.get("msg", "invalid"))})
    return result


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error, including unexpected ones, an RFC 9457 document (and say so in the OpenAPI document)."""
    _document_problems(app)

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.detail, title=exc.title, headers=exc.headers, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        fields = ", ".join(error["field"] for error in errors)
        return problem_response(422, f"invalid field(s): {fields}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_unstorable_text(exc):
            return problem_response(422, "text contains a NUL character (U+0000), which cannot be stored")
        if is_outage(exc):
            log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
            return problem_response(
                503,
                "a dependency (database or broker) is unavailable; nothing was stored, retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error; nothing was stored")


# PostgreSQL refusing U+0000: "character not in repertoire" (text columns), "untranslatable character" (jsonb).
_NUL_IN_TEXT_SQLSTATES = frozenset({"22021", "22P05"})

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def is_unstorable_text(exc: BaseException) -> bool:
    """True when the database refused a value because its text holds a NUL character: bad input, not a fault."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if _NUL_IN_TEXT_SQLSTATES & {getattr(seen, "sqlstate", None), getattr(seen, "pgcode", None)}:
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _document_problems(app: FastAPI) -> None:
    # FastAPI documents 422 as application/json HTTPValidationError; the handlers above answer problem+json.
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
            invalid = operation.get("responses", {}).get("422")
            if invalid is not None:
                invalid["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
