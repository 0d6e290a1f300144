"""Which failures are outages to wait out (retry, commit nothing) rather than faults of one message."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

_OUTAGE_NAMES = {
    "CannotConnectNowError",
    "ConnectionDoesNotExistError",
    "ConnectionFailureError",
    "AdminShutdownError",
    "CrashShutdownError",
    "TooManyConnectionsError",
    "InterfaceError",
}


def is_outage(exc: BaseException) -> bool:
    """True when the database or network is unavailable, as opposed to this input being bad."""
    if isinstance(exc, OSError | TimeoutError | PoolTimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or _is_outage_cause(exc.orig)
    return _is_outage_cause(exc.__cause__)


def _is_outage_cause(cause: BaseException | None) -> bool:
    return cause is not None and (isinstance(cause, OSError) or type(cause).__name__ in _OUTAGE_NAMES)
