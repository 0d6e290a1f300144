"""Which failures are outages to wait out (retry, commit nothing) rather than faults of one message."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# asyncpg's classes, by name so this module needs no driver: a server shutting down, restarting or recovering
# (OperatorInterventionError), a connection lost (PostgresConnectionError), or no connection slot free.
_OUTAGE_NAMES = {
    "OperatorInterventionError",
    "PostgresConnectionError",
    "TooManyConnectionsError",
    "InterfaceError",
}

# Transaction conflicts PostgreSQL resolves by aborting one side (serialization failure, deadlock): the work is
# fine and succeeds when tried again, so it must never count towards dead-lettering.
_CONFLICT_SQLSTATES = {"40001", "40P01"}


def is_outage(exc: BaseException) -> bool:
    """True when the database or network is unavailable (or a transaction lost a conflict it will win when
    retried), as opposed to this input being bad."""
    if isinstance(exc, OSError | TimeoutError | PoolTimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or _is_outage_cause(exc.orig)
    # asyncpg raises some connect-time refusals (a server still recovering) unwrapped.
    return _is_outage_cause(exc) or _is_outage_cause(exc.__cause__)


def _is_outage_cause(cause: BaseException | None) -> bool:
    if cause is None:
        return False
    for code in (getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None)):
        if code in _CONFLICT_SQLSTATES:
            return True
    if cause.__cause__ is not None and getattr(cause.__cause__, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return True
    return isinstance(cause, OSError) or any(kind.__name__ in _OUTAGE_NAMES for kind in type(cause).__mro__)
