"""Which failures are outages to wait out, and where a topic's dead letters go."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.envelope import InvalidEvent
from shared.failures import is_outage
from shared.topics import ALL_TOPICS, dead_letter_topic


class ConnectionDoesNotExistError(Exception):
    """Named like the asyncpg error raised when the server drops the connection."""


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
