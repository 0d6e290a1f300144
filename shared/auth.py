"""Bearer-key authentication; BATON_ADMIN_KEY is accepted by every service."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.problems import ProblemError

_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    name: str
    scopes: frozenset[str]


ADMIN = Principal(name="admin", scopes=frozenset({"admin"}))


def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """Resolve the caller from `Authorization: Bearer <key>`; 401 problem+json otherwise."""
    admin_key: str | None = request.app.state.admin_key
    if credentials is None:
        raise _unauthorized("missing Authorization: Bearer <key> header")
    if admin_key and secrets.compare_digest(credentials.credentials.encode(), admin_key.encode()):
        return ADMIN
    raise _unauthorized("invalid API key")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})


PrincipalDep = Annotated[Principal, Depends(authenticate)]
