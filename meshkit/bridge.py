"""Unary RPCs as protobuf over HTTP/1.1, behind Envoy's gRPC reverse bridge.

Envoy takes the client's gRPC call (HTTP/2, gRPC framing, trailers), strips the gRPC frame and
forwards the bare request message as an HTTP/1.1 POST to the method's path
(`envoy.filters.http.grpc_http1_reverse_bridge`, content type `application/x-protobuf`); it
frames our reply again and sends the call's status in trailers. So the service's Python does
no HTTP/2 and no gRPC framing for these calls: measured at 500 calls/s, 70-76 µs of the serving
process's CPU per call here against 324-364 µs for the same call on grpc.aio, Envoy's own
cost unchanged (docs/benchmarks/place_order.md). The client still makes a gRPC call; the
contract (protos/) is the same.

Envoy's bridge maps only the HTTP status to a gRPC status, so a failed call answers 200 with
headers `x-grpc-status`, `x-grpc-message` (percent-encoded, as gRPC's grpc-message) and
`x-grpc-status-details-bin` (the google.rpc.Status, base64): Envoy takes them out of the
headers and writes them into the trailers (a few lines of Lua and a header_mutation filter,
envoy/envoy.yaml.tmpl), so the client sees what a gRPC server would have sent. The status comes from the same
mapping as on the gRPC server (meshkit.interceptors.failure), and so do the caller's identity,
the request id and the metrics.

`GET /healthz` answers 200 while the service is SERVING (Envoy's health check of the
cluster), 503 otherwise. A call whose connection Envoy drops (the client's deadline, a reset)
is cancelled, as grpc.aio cancels it.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
import urllib.parse
from typing import Any, Awaitable, Callable

import httptools
from google.protobuf import descriptor_pool, message_factory

from meshkit.errors import MAX_REQUEST_BYTES, request_too_large
from meshkit.interceptors import RPC_SECONDS, RPC_TOTAL, bind_call, failure, undecodable

log = logging.getLogger("meshkit.bridge")

CONTENT_TYPE = b"application/x-protobuf"
# The largest request taken, as the services' gRPC ports take (grpc.max_receive_message_length):
# a bigger one is refused without being kept (acceptance round 13: 150 MiB PlaceOrders were
# read whole, order_svc grew by hundreds of MB).
MAX_BODY = MAX_REQUEST_BYTES
Handler = Callable[[Any, Any], Awaitable[Any]]
Routes = dict[str, tuple[Callable[[bytes], Any], Handler]]


def routes(servicers: list[tuple[Any, str]], methods: list[str]) -> Routes:
    """The bridged methods ("/package.Service/Method"), each with its request parser and the
    servicer's handler. `servicers`: (servicer, full service name) pairs."""
    out: Routes = {}
    by_service = {name: servicer for servicer, name in servicers}
    for path in methods:
        service, _, method = path.strip("/").partition("/")
        servicer = by_service.get(service)
        if servicer is None:
            raise ValueError(f"no servicer for {path}")
        desc = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
        if desc.client_streaming or desc.server_streaming:
            raise ValueError(f"{path} is not unary: Envoy's bridge carries unary calls only")
        request = message_factory.GetMessageClass(desc.input_type)
        out[path] = (request.FromString, getattr(servicer, method))
    return out


def _status_headers(status) -> bytes:
    details = base64.b64encode(status.SerializeToString()).rstrip(b"=")
    message = urllib.parse.quote(status.message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()
    return (b"x-grpc-status: %d\r\nx-grpc-message: %s\r\nx-grpc-status-details-bin: %s\r\n"
            % (status.code, message, details))


class _Connection(asyncio.Protocol):
    """One connection from Envoy: requests one after the other (Envoy never pipelines to an
    HTTP/1.1 upstream; should a client, the replies keep their order all the same)."""

    def __init__(self, server: BridgeServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0  # of the body so far
        self.last: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        for t in self.tasks:
            t.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            log.warning("malformed HTTP/1.1 request; closing the connection")
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_BODY:
            self.body.append(body)
        else:
            self.body = []  # refused when complete; nothing more is kept

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path, headers, body = self.url.decode("latin-1"), self.headers, b"".join(self.body)
        too_large = self.size > MAX_BODY
        self.url, self.headers, self.body, self.size = b"", [], [], 0
        task = asyncio.get_running_loop().create_task(
            self._answer(self.last, method, path, headers, None if too_large else body))
        self.last = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, before: asyncio.Task | None, method: bytes, path: str,
                      headers: list[tuple[str, str]], body: bytes | None) -> None:
        reply = await self.server.reply(method, path, headers, body)
        if before is not None and not before.done():
            await asyncio.shield(before)
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(reply)


class BridgeServer:
    def __init__(self, routes: Routes, serving: Callable[[], bool]) -> None:
        self.routes = routes
        self.serving = serving
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, addr: str) -> int:
        host, _, port = addr.rpartition(":")
        self._server = await asyncio.get_running_loop().create_server(lambda: _Connection(self), host, int(port))
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop taking connections; give the calls in flight `grace` seconds, then drop them."""
        if self._server is None:
            return
        self._server.close()
        calls = [t for c in self.connections for t in c.tasks]
        if calls:
            await asyncio.wait(calls, timeout=grace)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()

    async def reply(self, method: bytes, path: str, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
        """The HTTP/1.1 reply to one request; `body` None: it was larger than MAX_BODY. A query
        string is no part of a gRPC method's name, and is left out (Envoy's route took the call
        without it; round 18: the method was not found, and gRPC clients read UNKNOWN)."""
        path = path.partition("?")[0]
        if path == "/healthz" and method == b"GET":
            ok = self.serving()
            text = b"SERVING" if ok else b"NOT_SERVING"
            return (b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                    % (b"200 OK" if ok else b"503 Service Unavailable", len(text), text))
        route = self.routes.get(path)
        if route is None or method != b"POST":
            return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        parse, handler = route
        bind_call(headers)
        start = time.perf_counter()
        out, extra = b"", b""
        try:
            if body is None:
                raise request_too_large()
            try:
                request = parse(body)
            except Exception as exc:  # noqa: BLE001 - not the method's message: the caller's error
                raise undecodable(path) from exc
            reply = await handler(request, None)
            # A handler may answer with its reply already serialized (as on the gRPC server).
            out = reply if type(reply) is bytes else reply.SerializeToString()
            RPC_TOTAL.labels(path, "OK").inc()
        except asyncio.CancelledError:  # the caller went away (its deadline, a reset): counted as on a gRPC port
            RPC_TOTAL.labels(path, "CANCELLED").inc()
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
            extra = _status_headers(failure(path, exc))
        finally:
            RPC_SECONDS.labels(path).observe(time.perf_counter() - start)
        return (b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
                % (CONTENT_TYPE, len(out), extra)) + out
