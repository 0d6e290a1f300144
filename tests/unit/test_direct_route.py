"""A route served directly answers exactly as the router would: the same responses, errors through the same
handlers, the route in the scope for metrics and traces; a route that asks FastAPI for anything is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.direct import DirectRoute, NotDirect, route_of
from shared.metrics import route_template
from shared.problems import ProblemError, install_problem_handlers


class Teapot(Exception):
    """An error with a handler of its own."""


async def post_order(request: Request) -> Response:
    """Answers by the `outcome` of the body; records whether the router saw the request."""
    body = await request.json()
    request.app.state.routed.append("router" in request.scope)
    match body["outcome"]:
        case "problem":
            raise ProblemError(409, "already ordered")
        case "invalid":
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body", "item"), "msg": "Field required", "input": body}]
            )
        case "not found":
            raise HTTPException(404, "no such shop")
        case "teapot":
            raise Teapot
        case "crash":
            raise RuntimeError("boom")
    return JSONResponse({"ordered": body["item"]}, status_code=202, headers={"Location": "/v1/orders/1"})


def shop_router() -> APIRouter:
    router = APIRouter(prefix="/v1")
    router.post("/orders", status_code=202)(post_order)
    return router


class RouteSeen:
    """What the app's own middleware reads once the request is answered: the route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            scope["app"].state.templates.append(route_template(scope))


def shop(*, direct: bool) -> FastAPI:
    app = FastAPI()
    app.state.routed, app.state.templates = [], []
    install_problem_handlers(app)

    @app.exception_handler(Teapot)
    async def _teapot(_: Request, __: Teapot) -> JSONResponse:
        return JSONResponse({"detail": "short and stout"}, status_code=418)

    router = shop_router()
    app.include_router(router)
    if direct:
        app.add_middleware(DirectRoute, route=route_of(router, post_order))
    app.add_middleware(RouteSeen)
    return app


@pytest.fixture
async def shops() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, FastAPI, httpx.AsyncClient]]:
    routed, direct = shop(direct=False), shop(direct=True)

    def client(app: FastAPI) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://shop")

    async with client(routed) as via_router, client(direct) as served_directly:
        yield routed, via_router, direct, served_directly


def answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {name: value for name, value in response.headers.items() if name != "content-length"}
    return response.status_code, headers, response.json()


@pytest.mark.parametrize("outcome", ["ordered", "problem", "invalid", "not found", "teapot", "crash"])
async def test_a_direct_route_answers_as_the_router_does(
    shops: tuple[FastAPI, httpx.AsyncClient, FastAPI, httpx.AsyncClient], outcome: str
) -> None:
    routed, via_router, direct, served_directly = shops
    body = {"outcome": outcome, "item": "tea"}

    expected = await via_router.post("/v1/orders", json=body)
    got = await served_directly.post("/v1/orders", json=body)

    assert answer(got) == answer(expected)
    assert routed.state.routed == [True]
    assert direct.state.routed == [False]  # the router never saw it
    assert direct.state.templates == routed.state.templates == ["/v1/orders"]


async def test_other_methods_and_paths_still_go_through_the_router(
    shops: tuple[FastAPI, httpx.AsyncClient, FastAPI, httpx.AsyncClient],
) -> None:
    _, via_router, direct, served_directly = shops
    for method, path in (("GET", "/v1/orders"), ("POST", "/v1/orders/1"), ("POST", "/v1/orders/")):
        expected = await via_router.request(method, path)
        got = await served_directly.request(method, path)
        assert (got.status_code, got.headers.get("allow")) == (expected.status_code, expected.headers.get("allow"))
    assert direct.state.routed == []


def needs_a_caller() -> str:
    return "caller"


def test_a_route_that_asks_fastapi_for_anything_is_refused() -> None:
    router = APIRouter()

    @router.post("/with-query")
    async def with_query(request: Request, limit: int = 10) -> Response:
        return Response()

    @router.post("/with-dependency")
    async def with_dependency(request: Request, caller: Annotated[str, Depends(needs_a_caller)]) -> Response:
        return Response()

    @router.post("/orders/{order_id}")
    async def with_path(request: Request) -> Response:
        return Response()

    @router.api_route("/two-methods", methods=["POST", "PUT"])
    async def two_methods(request: Request) -> Response:
        return Response()

    for endpoint in (with_query, with_dependency, with_path, two_methods):
        with pytest.raises(NotDirect):
            DirectRoute(FastAPI(), route_of(router, endpoint))
