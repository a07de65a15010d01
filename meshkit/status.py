"""The one place where domain errors become gRPC statuses (google.rpc.Status + ErrorInfo)."""
from __future__ import annotations

import logging
import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from meshkit.errors import DomainError, InvalidArgument, Unavailable

DOMAIN = "stockmesh.dev"
# The response header of StreamOrderUpdates saying, once the stream listens, the sequence after
# which it sends every update: where a client that saw none resumes.
POSITION_HEADER = "x-stockmesh-after-sequence"


def _pack(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def to_rpc_status(err: DomainError) -> status_pb2.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN,
                                                 metadata=err.metadata))]
    if isinstance(err, InvalidArgument) and err.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in err.violations
        ])))
    retry_after = getattr(err, "retry_after_seconds", None)  # ResourceExhausted, some Unavailable
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(retry_after * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=getattr(code_pb2, err.code), message=err.message, details=details)


# The codes of a call to another service that go away by themselves: the caller asks again.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
TRANSIENT_NAMES = frozenset(c.name for c in TRANSIENT)


# The reasons of an outage of what a service depends on, passed on as they are by the service
# that called it (the docs tell clients and operators what each means; round 14: order_svc
# answered a ledger's BUS_UNAVAILABLE with a bare UNAVAILABLE); and the ledger's ACCOUNT_BUSY
# (an account held by another transaction for over a second: its placements wait it out).
PASSED_ON = frozenset({"BUS_UNAVAILABLE", "DATABASE_UNAVAILABLE", "ACCOUNT_BUSY"})
# When to try again after the database or NATS did not answer or an account was busy
# (RetryInfo; Retry-After over JSON), said by the service that met the outage and by those
# that pass it on: a restart takes seconds, and a client told nothing retried in a tight loop
# or gave up (round 18).
OUTAGE_RETRY_SECONDS = 1.0


def passed_on(reason: str | None) -> str | None:
    """`reason` (an upstream's ErrorInfo reason) when a caller passes it on, else None."""
    return reason if reason in PASSED_ON else None


def unavailable(message: str, upstream_reason: str | None, *, transient: bool = True) -> Unavailable:
    """The caller's UNAVAILABLE after an upstream's failure: with the upstream's reason when it
    is a dependency's outage (PASSED_ON), and, when the failure was `transient` (TRANSIENT),
    OUTAGE_RETRY_SECONDS whatever the reason: every call that meets one is safe to send again
    with the same ids (round 23 chaos: a ledger replica stopped made PlaceOrder and
    ReplaceOrder answer UNAVAILABLE without RetryInfo, which a client reads as "do not wait").
    An upstream's other failures (INTERNAL, a refusal this service did not expect) get none:
    waiting does not mend them (review of round 24)."""
    return Unavailable(message, reason=passed_on(upstream_reason),
                       retry_after_seconds=OUTAGE_RETRY_SECONDS if transient else None)


def upstream_unavailable(exc: grpc.aio.AioRpcError, what: str, log: logging.Logger) -> Unavailable:
    """A call to another service that failed in transport (down, restarting, slow) as the
    caller's UNAVAILABLE, "retry shortly": `what` failed, with its code, and with the upstream's
    reason when it is an outage of a dependency (PASSED_ON). The details (they name internal
    addresses and connections) go to the log at WARNING, not to the client."""
    log.warning(f"{what}: the call failed", extra={"code": exc.code().name, "error": exc.details()})
    info, _ = error_info(exc) if exc.code() == grpc.StatusCode.UNAVAILABLE else (None, None)
    failed = unavailable(f"{what}: {exc.code().name}; retry shortly", info.reason if info else None,
                         transient=exc.code() in TRANSIENT)
    if failed.reason == (info.reason if info else None):  # passed on: with what it names (ACCOUNT_BUSY's accountId)
        failed.metadata = dict(info.metadata)
    return failed


def retry_after(status: status_pb2.Status) -> tuple[tuple[str, str], ...]:
    """A `retry-after` (whole seconds, at least 1) beside a status with RetryInfo: gRPC clients
    read the RetryInfo; through Envoy's JSON transcoding it is the HTTP reply's Retry-After
    header (RFC 9110), which HTTP clients and proxies honour without parsing the body."""
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            return (("retry-after", str(max(1, math.ceil(info.retry_delay.ToMilliseconds() / 1000)))),)
    return ()


def error_info(exc: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None,
                                                                  error_details_pb2.BadRequest | None]:
    """Client side: the ErrorInfo and BadRequest details of a failed call (tests, CLI)."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    info = bad = None
    if status is not None:
        for d in status.details:
            if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                d.Unpack(info)
            elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                d.Unpack(bad)
    return info, bad
