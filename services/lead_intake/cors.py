"""CORS for browser posts, per form: an origin is allowed if a registered form lists it.

The preflight of `POST /v1/leads?form_id=X` answers for form X alone; the route itself then refuses (403) a post
whose Origin its form does not list, which also covers plain HTML form posts (they need no preflight).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from services.lead_intake.forms import FormRegistry
from shared.problems import problem_response

BROWSER_PATHS = ("/v1/leads", "/v1/activities")
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
EXPOSED_HEADERS = "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Idempotent-Replayed, Location"

Next = Callable[[Request], Awaitable[Response]]


async def _allowed_origins(registry: FormRegistry, form_id: str | None) -> frozenset[str]:
    form = await registry.get(form_id)
    return form.allowed_origins if form else await registry.known_origins()


def install_cors(app: FastAPI) -> None:
    """Answer preflights and label responses for the origins registered forms allow."""

    @app.middleware("http")
    async def cors(request: Request, call_next: Next) -> Response:
        origin = request.headers.get("origin")
        if origin is None or not request.url.path.startswith(BROWSER_PATHS):
            return await call_next(request)
        registry: FormRegistry = request.app.state.forms
        allowed = await _allowed_origins(registry, request.query_params.get("form_id"))
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            if origin not in allowed:
                return problem_response(403, f"origin {origin!r} is not allowed for this form")
            return Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "POST, OPTIONS",
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        response = await call_next(request)
        response.headers.append("Vary", "Origin")  # the answer depends on the origin: caches must know
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response
