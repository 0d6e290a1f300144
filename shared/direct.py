"""A busy route served without the router: the request skips the layers between the app's own middleware and the
endpoint, and is answered exactly as the router would answer it.

Between `HttpMetricsMiddleware` and an endpoint, Starlette and FastAPI put an exception middleware, an exit stack,
the router's walk through every route (and each included router's), the route's request handler and another
exception wrapper, each wrapping `send` again. For `POST /v1/leads` at 500 leads/s those layers were a sixth of
lead intake's CPU, more than the endpoint's own work before the database. Only an endpoint that asks FastAPI for
nothing may go direct: it takes the request alone (no parameters, body or dependencies to solve) and returns a
`Response`, so the router would have passed that response on untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response] | Response]


class NotDirect(ValueError):
    """The route asks FastAPI for something (parameters, a body, dependencies): it must go through the router."""


def route_of(router: APIRouter, endpoint: Callable[..., Any]) -> APIRoute:
    """The route `router` made of `endpoint`."""
    [route] = [route for route in router.routes if isinstance(route, APIRoute) and route.endpoint is endpoint]
    return route


def direct_endpoint(route: APIRoute) -> Endpoint:
    """`route`'s endpoint, if it takes the request alone; NotDirect otherwise."""
    wants = route.dependant
    asks = (
        wants.path_params,
        wants.query_params,
        wants.header_params,
        wants.cookie_params,
        wants.body_params,
        wants.dependencies,
    )
    if any(asks) or wants.request_param_name is None or route.dependencies:
        raise NotDirect(f"{sorted(route.methods or ())} {route.path} asks FastAPI for more than the request")
    endpoint: Endpoint = route.endpoint
    return endpoint


class DirectRoute:
    """Serves `route` (one method, one path, no path parameters) straight from its endpoint; anything else passes on.

    Errors the endpoint raises go to the app's exception handlers as the router would send them: a handler for
    the error's class (or an HTTPException's status), but not the handler for every `Exception`, which Starlette
    keeps for its server-error middleware outside; an error without a handler passes on to it, as before.
    """

    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        methods = sorted(route.methods or ())
        if len(methods) != 1 or route.param_convertors:
            raise NotDirect(f"{route.path}: one method and a fixed path only")
        self.app = app
        self._route = route
        self._endpoint = direct_endpoint(route)
        [self._method] = methods
        self._path = route.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self._path
            or scope["method"] != self._method
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        # What the router puts in the scope for a matched route: metrics, traces and logs read the route from it.
        scope["route"] = self._route
        scope["endpoint"] = self._endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await self._endpoint(request)
        except Exception as exc:
            handler = handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


def handler_for(handlers: Mapping[Any, ExceptionHandler], exc: Exception) -> ExceptionHandler | None:
    """The handler Starlette's exception middleware would pick for `exc`: by status for an HTTPException, then by
    the nearest class in its MRO, leaving out the catch-all `Exception` (and 500), which are the server error's."""
    if isinstance(exc, HTTPException) and exc.status_code in handlers and exc.status_code != 500:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
