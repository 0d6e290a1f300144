"""CORS for browser posts, per form: an origin is allowed if a registered form lists it.

The preflight of `POST /v1/leads?form_id=X` answers for form X alone; the route itself then refuses (403) a post
whose Origin its form does not list, which also covers plain HTML form posts (they need no preflight).
"""

from __future__ import annotations

from fastapi import FastAPI, Response
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.lead_intake.forms import FormRegistry
from shared.problems import problem_response

BROWSER_PATHS = ("/v1/leads", "/v1/activities")
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
EXPOSED_HEADERS = "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Idempotent-Replayed, Location"


async def _allowed_origins(registry: FormRegistry, form_id: str | None) -> frozenset[str]:
    form = await registry.get(form_id)
    return form.allowed_origins if form else await registry.known_origins()


class FormCorsMiddleware:
    """Answers preflights and labels responses for the origins registered forms allow.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware (`@app.middleware("http")`) runs every request in an
    extra task with memory streams, a cost every lead submission paid even without an Origin header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(BROWSER_PATHS):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        registry: FormRegistry = scope["app"].state.forms
        allowed = await _allowed_origins(registry, QueryParams(scope["query_string"]).get("form_id"))
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _preflight(origin, allowed)(scope, receive, send)
            return

        async def send_labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                labels = MutableHeaders(scope=message)
                labels.append("Vary", "Origin")  # the answer depends on the origin: caches must know
                if origin in allowed:
                    labels["Access-Control-Allow-Origin"] = origin
                    labels["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            await send(message)

        await self.app(scope, receive, send_labelled)


def _preflight(origin: str, allowed: frozenset[str]) -> Response:
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


def install_cors(app: FastAPI) -> None:
    """Answer preflights and label responses for the origins registered forms allow."""
    app.add_middleware(FormCorsMiddleware)
