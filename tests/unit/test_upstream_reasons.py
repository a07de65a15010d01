"""A service that called another answers that one's dependency outage with its reason
(meshkit.status.upstream_unavailable): acceptance round 14 A saw PlaceOrder during a NATS stall
answer UNAVAILABLE with reason UNAVAILABLE, where the ledger had said BUS_UNAVAILABLE, the
reason the docs tell clients and operators about. Other reasons (an upstream's own words) stay
the caller's UNAVAILABLE."""
from __future__ import annotations

import logging

import grpc
import pytest
from grpc_status import rpc_status

from meshkit.errors import Unavailable
from meshkit.status import to_rpc_status, upstream_unavailable


def failed_call(code: grpc.StatusCode, reason: str, metadata: dict[str, str] | None = None) -> grpc.aio.AioRpcError:
    status = to_rpc_status(Unavailable("NATS did not answer", reason=reason, metadata=metadata))
    status.code = code.value[0]
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*rpc_status.to_status(status).trailing_metadata),
                                details=status.message)


@pytest.mark.parametrize("reason", ["BUS_UNAVAILABLE", "DATABASE_UNAVAILABLE"])
def test_a_dependency_outage_is_passed_on_with_its_reason(reason):
    err = upstream_unavailable(failed_call(grpc.StatusCode.UNAVAILABLE, reason), "the ledger could not wait",
                               logging.getLogger("test"))
    assert (err.code, err.reason) == ("UNAVAILABLE", reason)
    assert err.message == "the ledger could not wait: UNAVAILABLE; retry shortly"
    assert err.retry_after_seconds == 1.0  # with the RetryInfo the service that met the outage gives (round 18)


def test_other_reasons_and_no_details_stay_the_callers_own():
    log = logging.getLogger("test")
    assert upstream_unavailable(failed_call(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), "x", log).reason == \
        "UNAVAILABLE"
    bare = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")
    assert upstream_unavailable(bare, "x", log).reason == "UNAVAILABLE"
    # "retry shortly" with a RetryInfo to say when (round 23 chaos: none, on a ledger stopped),
    # for a transient failure only: waiting does not mend an upstream's INTERNAL.
    assert upstream_unavailable(bare, "x", log).retry_after_seconds == 1.0
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        cut = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="cut")
        assert upstream_unavailable(cut, "x", log).retry_after_seconds == 1.0
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNIMPLEMENTED):
        broken = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="bug")
        assert upstream_unavailable(broken, "x", log).retry_after_seconds is None


def test_a_busy_account_is_passed_on_with_the_account_it_names():
    """Review of round 22: order_svc passed the ledger's ACCOUNT_BUSY of a release (a retried
    PlaceOrder giving its hold back) on without its accountId, which the docs promise. A reason
    not passed on takes none of the upstream's metadata."""
    log = logging.getLogger("test")
    busy = upstream_unavailable(failed_call(grpc.StatusCode.UNAVAILABLE, "ACCOUNT_BUSY", {"accountId": "alice"}),
                                "the ledger could not release hold h", log)
    assert (busy.reason, busy.metadata, busy.retry_after_seconds) == ("ACCOUNT_BUSY", {"accountId": "alice"}, 1.0)
    other = upstream_unavailable(failed_call(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", {"host": "10.0.0.7"}),
                                 "x", log)
    assert (other.reason, other.metadata) == ("UNAVAILABLE", {})
