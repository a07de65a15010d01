"""Cross-cutting work for every RPC, written once: request id, caller identity, access log,
metrics, and the mapping of domain errors to statuses."""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from meshkit import auth, bus, db, logs
from meshkit.errors import DomainError, InvalidArgument, Unavailable, Unimplemented
from meshkit.status import OUTAGE_RETRY_SECONDS, retry_after, to_rpc_status

log = logging.getLogger("meshkit.rpc")

RPC_TOTAL = Counter("stockmesh_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram("stockmesh_rpc_seconds", "RPC handling time", ["method"],
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


# The longest x-request-id a client's call is logged under (a UUID is 36 characters); a longer
# one, or one with characters that are not printable ASCII, is replaced by one of our own
# (round 18: a client's id of any length, up to Envoy's 60 KiB of headers, went into every log
# line of the call).
MAX_REQUEST_ID = 128


def request_id(sent: str | None) -> str:
    """The id a call is logged under: the client's (or Envoy's) x-request-id when it is a sane
    one, else a new one."""
    if sent and len(sent) <= MAX_REQUEST_ID and sent.isascii() and sent.isprintable():
        return sent
    return uuid.uuid4().hex


def bind_call(metadata) -> None:
    """The call's request id and caller (Envoy's verified JWT payload) for logs and handlers;
    `metadata`: (key, value) pairs, gRPC metadata or HTTP headers."""
    md = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    logs.request_id.set(request_id(md.get("x-request-id")))
    payload = md.get(auth.PAYLOAD_HEADER) or ""
    account, refused = auth.account_from_payload(payload)
    account = account or ""
    logs.account_id.set(account)
    auth.subject_refused.set(refused)
    auth.caller_payload.set(payload if account else "")


def failure(method: str, exc: Exception) -> status_pb2.Status:
    """The status a call that raised `exc` ends with (counted and logged here): a domain
    error's own (with its details), INTERNAL for anything else. Called inside the handler's
    `except` (the log carries the traceback of a crash)."""
    if isinstance(exc, NotImplementedError):
        # A generated base-class method nobody overrode yet: say so, never make data up.
        exc = Unimplemented(f"{method.strip('/')} is not implemented yet in this release",
                            metadata={"method": method.strip("/")})
    if not isinstance(exc, DomainError) and db.connection_lost(exc):
        # The database went away under the call (restarting, say): a transient failure the
        # client retries (placements and deposits are idempotent on their ids), not a crash.
        log.warning("rpc failed: the database connection was lost", extra={"method": method, "error": repr(exc)})
        exc = Unavailable(f"the database is unavailable; try again (request id {logs.request_id.get()})",
                          reason="DATABASE_UNAVAILABLE", retry_after_seconds=OUTAGE_RETRY_SECONDS)
    elif not isinstance(exc, DomainError) and bus.unreachable(exc):
        # NATS did not answer (down, restarting, partitioned): transient too. A publish whose
        # acknowledgement was lost may still have been stored, so the client is told to look
        # before it acts again (a halt, say); the idempotent calls it may simply retry.
        log.warning("rpc failed: NATS did not answer", extra={"method": method, "error": repr(exc)})
        exc = Unavailable("NATS (the message bus) did not answer; what was asked may still take effect: check "
                          f"before acting on it, or retry (request id {logs.request_id.get()})",
                          reason="BUS_UNAVAILABLE", retry_after_seconds=OUTAGE_RETRY_SECONDS)
    if isinstance(exc, DomainError):
        RPC_TOTAL.labels(method, exc.code).inc()
        log.info("rpc failed", extra={"method": method, "code": exc.code, "reason": exc.reason})
        return to_rpc_status(exc)
    RPC_TOTAL.labels(method, "INTERNAL").inc()
    log.exception("rpc crashed", extra={"method": method})
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (request id {logs.request_id.get()})")


# A status a service answers itself is not to be sent again by a caller's channel (gRPC's
# retry pushback, negative: no retry): meshkit.channels retries only what failed in transport.
_NO_CHANNEL_RETRY = (("grpc-retry-pushback-ms", "-1"),)


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    status = failure(method, exc)
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details,
                        tuple(grpc_status.trailing_metadata) + retry_after(status) + _NO_CHANNEL_RETRY)


def _count_abort(method: str, context: grpc.aio.ServicerContext) -> None:
    """A handler's own context.abort counted under its code (an abort made by _fail, inside an
    except clause, never reaches the AbortError clause beside it: counted there)."""
    code = context.code()
    RPC_TOTAL.labels(method, code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN").inc()


def _pass_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A handler may answer with its reply already serialized (`bytes`, e.g. cached parts of
    a message joined: protobuf's wire format concatenates), which is sent as it is."""
    if serializer is None:
        return None
    return lambda reply: reply if type(reply) is bytes else serializer(reply)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once, on its first call, and answers later calls of the
    method with the wrapped handler at once (per-call state comes from the call's context)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return handler
            wrapped = self._wrapped[details.method] = _wrap(details.method, handler)
        return wrapped


# What a request whose bytes are not its message deserializes to: answered INVALID_ARGUMENT by
# the handler's wrapper (gRPC itself answered UNKNOWN naming a Python class, acceptance round 13).
_UNDECODABLE = object()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - the handler's wrapper says what it was
            return _UNDECODABLE
    return decode


def undecodable(method: str) -> InvalidArgument:
    return InvalidArgument([], reason="UNDECODABLE_REQUEST",
                           message=f"the request is not a {method.strip('/').split('/')[-1]} request message "
                                   "(protobuf that does not decode)")


def _wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    ok = RPC_TOTAL.labels(method, "OK")  # the method's series, looked up once
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary
        seconds = RPC_SECONDS.labels(method)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            bind_call(context.invocation_metadata())
            start = time.perf_counter()
            try:
                if request is _UNDECODABLE:
                    raise undecodable(method)
                reply = await inner_uu(request, context)
            except grpc.aio.AbortError:
                _count_abort(method, context)
                raise
            except asyncio.CancelledError:  # the client went away (cancel, deadline)
                RPC_TOTAL.labels(method, "CANCELLED").inc()
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
                await _fail(context, method, exc)
                raise
            finally:
                seconds.observe(time.perf_counter() - start)
            ok.inc()
            return reply

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=_pass_bytes(handler.response_serializer))
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext):
            bind_call(context.invocation_metadata())
            try:
                if request is _UNDECODABLE:
                    raise undecodable(method)
                result = inner_us(request, context)
                if inspect.isawaitable(result):  # a handler that writes with context.write
                    await result
                else:
                    async for item in result:
                        yield item
            except grpc.aio.AbortError:
                _count_abort(method, context)
                raise
            except (asyncio.CancelledError, GeneratorExit):  # the client went away: most streams end so
                RPC_TOTAL.labels(method, "CANCELLED").inc()
                raise
            except Exception as exc:  # noqa: BLE001
                await _fail(context, method, exc)
                raise
            ok.inc()

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=_pass_bytes(handler.response_serializer))
    return handler
