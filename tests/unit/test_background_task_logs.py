"""A service healing itself is not an error (explorer, round 26): a background loop restarted
because PostgreSQL ended its session (pg_terminate_backend: elections, LISTEN connections), and
a close that finds NATS gone (the launcher killed, NATS first), are logged at WARNING in one
line; anything else (a bug) stays at ERROR with its traceback, so alerts on ERROR mean one."""
from __future__ import annotations

import logging

import asyncpg
import nats.errors
import pytest

from meshkit.errors import Lasting
from meshkit.server import _supervised, close_all
from meshkit.transient import transient
from tests.support.errors import chained

PASSING = [
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("cannot call Connection.fetchval(): connection is closed"),
    ConnectionError("lost the election's connection: ConnectionDoesNotExistError()"),  # db.answers
    chained(RuntimeError("LISTEN failed"), ConnectionResetError(104, "Connection reset by peer")),
    nats.errors.ConnectionReconnectingError(),
    nats.errors.ConnectionClosedError(),
]
BUGS = [
    ValueError("a bug"),
    # A passing cause that lasted past its retries (the outbox relay's publishes, 30 s): look.
    chained(Lasting("publishes failed for 30 s"), nats.errors.TimeoutError()),
    asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
]


@pytest.mark.parametrize("exc", PASSING)
def test_a_connection_s_passing_failure_is_transient(exc: Exception) -> None:
    assert transient(exc) in ("the database connection was lost", "NATS did not answer")


@pytest.mark.parametrize("exc", BUGS)
def test_anything_else_is_not(exc: Exception) -> None:
    assert transient(exc) is None


def _failing_once(exc: Exception):
    raised: list[Exception] = []

    async def task() -> None:
        if not raised:
            raised.append(exc)
            raise exc

    return task


def _records(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_background_task_that_lost_its_connection_restarts_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="meshkit.server"):
        await _supervised(_failing_once(PASSING[0]))
    [said] = _records(caplog, "background task lost a connection; restarting")
    assert said.levelno == logging.WARNING and said.exc_info is None
    assert said.reason == "the database connection was lost"
    assert said.error == "AdminShutdownError: terminating connection due to administrator command"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_background_task_that_crashed_is_an_error_with_its_traceback(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="meshkit.server"):
        await _supervised(_failing_once(ValueError("a bug")))
    [said] = _records(caplog, "background task crashed; restarting")
    assert said.levelno == logging.ERROR and said.exc_info is not None


async def test_a_close_that_finds_nats_gone_is_a_warning_and_a_failing_one_an_error(caplog) -> None:
    async def nats_gone() -> None:
        raise nats.errors.ConnectionReconnectingError

    async def broken() -> None:
        raise RuntimeError("a bug")

    closed: list[str] = []

    async def fine() -> None:
        closed.append("fine")

    with caplog.at_level(logging.INFO, logger="meshkit.server"):
        await close_all([nats_gone, broken, fine], timeout=5)
    assert closed == ["fine"]  # the others did not keep it from closing
    [warned] = _records(caplog, "not closed cleanly: a connection was gone already")
    assert warned.levelno == logging.WARNING and warned.exc_info is None and warned.reason == "NATS did not answer"
    assert warned.closer.endswith("nats_gone")
    [failed] = _records(caplog, "error while closing")
    assert failed.levelno == logging.ERROR and failed.exc_info is not None and failed.closer.endswith("broken")


class _Msg:
    subject = "ns.executions.AAPL"

    async def in_progress(self) -> None:
        pass


@pytest.mark.parametrize(("exc", "level"), [(PASSING[0], logging.WARNING), (ValueError("a bug"), logging.ERROR)])
async def test_a_consumer_s_retry_after_a_lost_connection_is_a_warning(caplog, exc: Exception, level: int) -> None:
    """A consumer's message retried in place because PostgreSQL ended the handler's session: a
    warning in one line; a handler's bug stays an error with its traceback (what is stuck)."""
    from meshkit.bus import _until_done

    with caplog.at_level(logging.INFO, logger="meshkit.bus"):
        await _until_done(_failing_once(exc), [_Msg()], "ledger_AAPL")
    [said] = _records(caplog, "message handling failed; retrying")
    assert said.levelno == level and (said.exc_info is None) == (level == logging.WARNING)
    assert said.durable == "ledger_AAPL" and said.attempts == 1
