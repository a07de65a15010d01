"""A call that loses its database connection ends UNAVAILABLE (clients retry it), not INTERNAL;
an error of the statement or of the program stays what it is. Found by killing PostgreSQL
while customers traded (tests/e2e/test_chaos.py)."""
from __future__ import annotations

import asyncpg
import nats.errors
import pytest
from google.rpc import code_pb2, error_details_pb2

from meshkit.db import connection_lost
from meshkit.interceptors import failure
from tests.support.errors import chained


@pytest.mark.parametrize("exc", [
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    ConnectionRefusedError(111, "Connection refused"),
    asyncpg.InterfaceError("cannot call Transaction.rollback(): the underlying connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    chained(RuntimeError("a batch failed"), ConnectionResetError(104, "Connection reset by peer")),
])
def test_a_lost_connection_is_unavailable(exc: Exception) -> None:
    assert connection_lost(exc)
    status = failure("/stockmesh.order.v1.OrderService/CancelOrder", exc)
    assert status.code == code_pb2.UNAVAILABLE
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.reason == "DATABASE_UNAVAILABLE"
    assert status.details[1].Unpack(retry) and retry.retry_delay.ToMilliseconds() == 1000  # round 18: none


@pytest.mark.parametrize("exc", [
    asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ValueError("a bug"),
])
def test_other_errors_stay_internal(exc: Exception) -> None:
    assert not connection_lost(exc)
    assert failure("/stockmesh.order.v1.OrderService/CancelOrder", exc).code == code_pb2.INTERNAL


@pytest.mark.parametrize("exc", [
    nats.errors.TimeoutError(),
    nats.errors.NoServersError(),
    chained(RuntimeError("publishing the halt failed"), nats.errors.ConnectionClosedError()),
])
def test_nats_not_answering_is_unavailable_and_says_the_call_may_still_take_effect(exc: Exception) -> None:
    """A halt published while NATS was stopped (acceptance round 7): its acknowledgement never
    came, the halt landed when NATS resumed, and the operator had been told INTERNAL."""
    status = failure("/stockmesh.matching.v1.EngineControlService/HaltSymbol", exc)
    assert status.code == code_pb2.UNAVAILABLE
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.reason == "BUS_UNAVAILABLE"
    assert "may still take effect" in status.message
    assert status.details[1].Unpack(retry) and retry.retry_delay.ToMilliseconds() == 1000
