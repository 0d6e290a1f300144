"""Bearer-key authentication; BATON_ADMIN_KEY is accepted by every service, a service may resolve its own keys."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.problems import ProblemError

_bearer = HTTPBearer(auto_error=False)

ADMIN_SCOPE = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do; empty origin/form sets mean no restriction."""

    name: str
    scopes: frozenset[str]
    kind: str = "admin"
    allowed_origins: frozenset[str] = frozenset()
    allowed_forms: frozenset[str] = frozenset()

    def allows(self, scope: str) -> bool:
        """True if the caller holds `scope` (the admin scope holds every scope)."""
        return ADMIN_SCOPE in self.scopes or scope in self.scopes


ADMIN = Principal(name="admin", scopes=frozenset({ADMIN_SCOPE}))

# A service's own key store: the presented key in, a principal out (None if unknown or revoked).
KeyResolver = Callable[[str], Awaitable[Principal | None]]


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """Resolve the caller from `Authorization: Bearer <key>`; 401 problem+json otherwise."""
    if credentials is None:
        raise _unauthorized("missing Authorization: Bearer <key> header")
    return await resolve_key(request, credentials.credentials)


async def resolve_key(request: Request, presented: str) -> Principal:
    """The principal behind a presented key: the admin key, or one of the service's own keys."""
    admin_key: str | None = request.app.state.admin_key
    if admin_key and secrets.compare_digest(presented.encode(), admin_key.encode()):
        return ADMIN
    resolver: KeyResolver | None = getattr(request.app.state, "key_resolver", None)
    principal = await resolver(presented) if resolver else None
    if principal is None:
        raise _unauthorized("invalid API key")
    return principal


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through only callers holding `scope` (403 problem+json otherwise)."""

    async def _check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.allows(scope):
            raise ProblemError(403, f"this key lacks the {scope!r} scope")
        return principal

    return _check


PrincipalDep = Annotated[Principal, Depends(authenticate)]
AdminDep = Annotated[Principal, Depends(require(ADMIN_SCOPE))]
