"""Which failures are outages to wait out, and where a topic's dead letters go."""

from __future__ import annotations

import pytest
from asyncpg.exceptions import AdminShutdownError, CannotConnectNowError, ConnectionDoesNotExistError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.envelope import InvalidEvent
from shared.failures import is_outage
from shared.topics import ALL_TOPICS, dead_letter_topic


def _chained(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "error",
    [
        OSError("network unreachable"),
        ConnectionRefusedError("refused"),
        TimeoutError(),
        PoolTimeoutError("pool exhausted"),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        _chained(RuntimeError("query failed"), ConnectionResetError()),
        _chained(RuntimeError("query failed"), ConnectionDoesNotExistError()),
    ],
    ids=repr,
)
def test_unavailable_dependency_is_an_outage(error: Exception) -> None:
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        InvalidEvent("not a CloudEvent"),
        KeyError("missing"),
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        _chained(RuntimeError("handler failed"), ValueError("bad input")),
    ],
    ids=repr,
)
def test_fault_of_one_message_is_not_an_outage(error: Exception) -> None:
    assert not is_outage(error)


def test_integrity_error_on_a_dropped_connection_is_an_outage() -> None:
    error = IntegrityError("INSERT", {}, ConnectionDoesNotExistError(), connection_invalidated=True)
    assert is_outage(error)


def test_dead_letters_go_to_the_dlq_topic_of_their_topic() -> None:
    assert dead_letter_topic("leads.captured") == "leads.captured.dlq"


def test_dead_letter_topics_are_distinct_from_every_topic() -> None:
    letters = {dead_letter_topic(topic) for topic in ALL_TOPICS}
    assert len(letters) == len(ALL_TOPICS)
    assert not letters & set(ALL_TOPICS)


def test_a_database_still_recovering_is_an_outage_even_unwrapped() -> None:
    assert is_outage(CannotConnectNowError("the database system is not yet accepting connections"))


def test_a_server_shutting_down_or_a_lost_connection_is_an_outage() -> None:
    assert is_outage(AdminShutdownError("terminating connection due to administrator command"))
    assert is_outage(ConnectionDoesNotExistError("connection was closed in the middle of operation"))


class _Deadlock(Exception):
    sqlstate = "40P01"


def test_a_deadlock_or_serialization_conflict_is_retried_not_dead_lettered() -> None:
    wrapped = DBAPIError("UPDATE rep_loads ...", {}, _Deadlock("deadlock detected"))
    assert is_outage(wrapped)
