"""gRPC server start-up, written once for every service.

`create_server(addr, app)` builds a grpc.aio server (health, reflection, interceptors) and
returns it with its bound port, so tests start a real server on port 0; `run(...)` is what a
service's `__main__` calls: settings, logs, bootstrap, health flipped to SERVING only once the
service's own dependencies answer, graceful shutdown on SIGTERM.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Histogram, start_http_server

from meshkit import aio, config, logs
from meshkit.bridge import BridgeServer, routes as bridge_routes
from meshkit.errors import MAX_REQUEST_BYTES
from meshkit.interceptors import ServiceInterceptor
from meshkit.transient import one_line, transient

log = logging.getLogger("meshkit.server")

GC_PAUSE = Histogram("stockmesh_gc_pause_seconds", "Pauses of Python's cyclic garbage collector", ["generation"],
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))


# How long a callback that just became ready waits for its turn: the event loop is the one
# queue everything a service does passes through, several times per request.
LOOP_LAG = Histogram("stockmesh_event_loop_lag_seconds",
                     "From a callback becoming ready to it running (sampled every 50 ms)",
                     buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))


async def watch_loop_lag(every: float = 0.05) -> None:
    """Every `every` seconds, make a callback ready and time how long it waits to run (the
    callbacks ahead of it, and the poll for I/O between two turns of the loop)."""
    loop = asyncio.get_running_loop()

    def probe(ready: float) -> None:
        LOOP_LAG.observe(time.perf_counter() - ready)

    while True:
        await asyncio.sleep(every)
        loop.call_soon(probe, time.perf_counter())


def watch_gc(slow: float = 0.02) -> Callable[[str, dict], None]:
    """Time every collection of the cyclic garbage collector (the loop stands still meanwhile):
    a histogram per generation, and a warning for a pause longer than `slow` seconds."""
    started = 0.0

    def on_gc(phase: str, info: dict) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
            return
        pause = time.perf_counter() - started
        GC_PAUSE.labels(str(info["generation"])).observe(pause)
        if pause > slow:  # not the request's: the collector runs in whichever call is current
            logs.outside_any_call(log.warning, "slow garbage collection", extra={
                "generation": info["generation"], "pauseMs": round(pause * 1000, 1), "collected": info["collected"]})
    gc.callbacks.append(on_gc)
    return on_gc

# Every service's reflection lists the whole public contract, so that `grpcurl list` and
# `describe` through Envoy (which routes reflection to one upstream) show all of it.
PUBLIC_SERVICES = (
    "stockmesh.order.v1.OrderService",
    "stockmesh.ledger.v1.LedgerService",
    "stockmesh.quote.v1.QuoteService",
    "stockmesh.matching.v1.MarketDataService",
)


def _load_public_descriptors() -> None:
    # Importing the modules registers their descriptors in the default pool.
    from stockmesh.ledger.v1 import ledger_service_pb2  # noqa: F401
    from stockmesh.matching.v1 import market_data_service_pb2  # noqa: F401
    from stockmesh.order.v1 import order_service_pb2  # noqa: F401
    from stockmesh.quote.v1 import quote_service_pb2  # noqa: F401


def _reflection_pool(names: list[str]) -> Any:
    """The descriptors reflection describes: the files of `names` (what this process serves and
    the public contract) and their imports. Not the whole default pool, which also holds the
    internal services this process calls (order_svc imports HoldService's stubs), so that
    `grpcurl describe stockmesh.ledger.v1.HoldService` through Envoy found its schema."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    default, pool, added = descriptor_pool.Default(), descriptor_pool.DescriptorPool(), set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for name in names:
        add(default.FindServiceByName(name).file)
    return pool


Check = Callable[[], Awaitable[Any]]


@dataclass
class App:
    """What a service's bootstrap() hands to the server."""

    name: str
    # (add_XServicer_to_server, servicer, full service name)
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]]
    # Readiness: each raises when a dependency the service needs to serve does not answer.
    checks: list[Check] = field(default_factory=list)
    # Dependencies only background work needs (the ledger's execution consumer, NATS): a
    # failure is logged as it starts and as it ends, and the service stays SERVING, since its
    # calls are answered without them (taking every replica out for it would stop them all).
    soft_checks: list[Check] = field(default_factory=list)
    # Long-running tasks (consumers, relays) started with the server.
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Called once shutdown begins (health already NOT_SERVING), before the server stops: e.g.
    # ending endless streams at once, so their clients reconnect elsewhere instead of waiting
    # out the grace period.
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Unary methods ("/package.Service/Method") also served as protobuf over HTTP/1.1 behind
    # Envoy's gRPC reverse bridge when settings.bridge_listen is set (meshkit.bridge).
    bridged: list[str] = field(default_factory=list)

    @property
    def service_names(self) -> list[str]:
        return [name for _, _, name in self.servicers]


LIVENESS = "liveness"  # the health service name a liveness probe asks (deploy/k8s)
MAX_METADATA = 64 * 1024  # bytes of request metadata a service takes (Envoy's own limit is 60 KiB)


async def create_server(addr: str, app: App) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            # Request metadata up to what Envoy takes (60 KiB, its default): gRPC's own limit,
            # 8 KiB soft and 16 KiB hard, refused a request between them at random, and a big
            # token's x-jwt-payload counts twice where a service passes it on (GetPortfolio
            # asking order_svc), whose refusal came back as UNAVAILABLE "retry shortly" (round 16).
            ("grpc.max_metadata_size", MAX_METADATA),
            ("grpc.absolute_max_metadata_size", MAX_METADATA),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    for add, servicer, _ in app.servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _load_public_descriptors()
    names = sorted(set(app.service_names) | set(PUBLIC_SERVICES)) + [
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server, pool=_reflection_pool(names))
    port = server.add_insecure_port(addr)
    if port == 0:
        raise OSError(f"could not listen on {addr}")
    await _set_all(health_servicer, app, health_pb2.HealthCheckResponse.NOT_SERVING)
    # Liveness: SERVING while the process answers at all, whatever its dependencies. The
    # others ("" and each service) say whether to send it calls (readiness); a probe that
    # restarts processes must not restart every one of them while NATS or PostgreSQL is out.
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


async def _set_all(h: health.aio.HealthServicer, app: App, status: int) -> None:
    for name in ["", *app.service_names]:
        await h.set(name, status)


async def _first_failure(checks: list[Check]) -> str | None:
    for check in checks:
        try:
            await asyncio.wait_for(check(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - any failure means not answering
            return f"{getattr(check, '__qualname__', None) or type(check).__name__}: {exc!r}"
    return None


async def check_ready(app: App) -> str | None:
    """None when every dependency the service needs (app.checks) answers, else what failed."""
    return await _first_failure(app.checks)


@dataclass
class Readiness:
    """Whether the service is SERVING, as its health checks say (also read by the bridge)."""
    serving: bool = False


async def watch_health(h: health.aio.HealthServicer, app: App, ready: Readiness | None = None) -> None:
    """SERVING only while the service's own dependencies answer; app.soft_checks only logged."""
    serving: bool | None = None
    degraded: str | None = None
    while True:
        # Side by side: a soft check that hangs does not hold back what readiness sees.
        problem, trouble = await asyncio.gather(check_ready(app), _first_failure(app.soft_checks))
        if (trouble is None) != (degraded is None):
            if trouble is not None:
                log.warning("degraded: a dependency of background work does not answer; still serving",
                            extra={"problem": trouble})
            else:
                log.info("no longer degraded")
        degraded = trouble
        ok = problem is None
        if ok != serving:
            if ready is not None:
                ready.serving = ok
            await _set_all(h, app, health_pb2.HealthCheckResponse.SERVING if ok
                           else health_pb2.HealthCheckResponse.NOT_SERVING)
            if ok:
                log.info("serving")
            else:
                log.warning("not serving: dependency down", extra={"problem": problem})
            serving = ok
        await asyncio.sleep(2 if ok else 0.25)


async def _supervised(task_fn: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; log and restart it if it crashes: at WARNING, in one line, when a
    connection it held failed (transient), else at ERROR with the traceback."""
    while True:
        try:
            await task_fn()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            reason = transient(exc)
            if reason is None:
                log.exception("background task crashed; restarting", extra={"task": task_fn.__qualname__})
            else:
                log.warning("background task lost a connection; restarting",
                            extra={"task": task_fn.__qualname__, "reason": reason, "error": one_line(exc)})
            await asyncio.sleep(1)


def start_metrics(settings: config.Settings) -> None:
    """Prometheus /metrics on METRICS_LISTEN:METRICS_PORT (none without a port)."""
    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port, addr=settings.metrics_host)
        except OSError as exc:  # a name that does not resolve, an address not ours, a port taken
            raise config.ConfigError(
                f"{settings.service}: cannot serve /metrics on METRICS_LISTEN={settings.metrics_host} "
                f"METRICS_PORT={settings.metrics_port}: {exc}") from None


_ROLLED_BACK = "Resetting connection with an active transaction"  # asyncpg's words


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The event loop's handler of errors nobody awaited. asyncpg reports through it a
    connection handed back to its pool mid-transaction (a call cancelled by its client's
    deadline while its BEGIN or ROLLBACK was in flight, meshkit.uow), which the pool then rolls
    back as designed: a warning, not an ERROR with a traceback (round 17: 55 of them for calls
    sent with a 3 ms deadline). Anything else as the loop says it."""
    if str(context.get("message", "")).startswith(_ROLLED_BACK):
        log.warning("a connection was handed back mid-transaction (a cancelled call); its pool rolled it back")
        return
    loop.default_exception_handler(context)


async def serve(settings: config.Settings, bootstrap: Callable[[config.Settings], Awaitable[App]]) -> None:
    asyncio.get_running_loop().set_exception_handler(loop_exception)
    app = await bootstrap(settings)
    server, port, health_servicer = await create_server(settings.listen, app)
    start_metrics(settings)
    await server.start()
    # Everything built so far (modules, descriptors, pools) lives as long as the process:
    # moved out of the collector's reach, a full collection scans only what came after it.
    # Measured: full collections paused each service 100+ ms before, ~3 ms after, which was
    # most of the p99 of GetPortfolio (docs/benchmarks/quotes.md).
    gc.collect()
    gc.freeze()
    watch_gc()
    log.info("listening", extra={"port": port, "services": app.service_names})
    ready = Readiness()
    bridge = None
    if settings.bridge_listen and app.bridged:
        bridge = BridgeServer(bridge_routes([(s, n) for _, s, n in app.servicers], app.bridged),
                              lambda: ready.serving)
        bridge_port = await bridge.start(settings.bridge_listen)
        log.info("bridge listening", extra={"port": bridge_port, "methods": app.bridged})
    tasks = [asyncio.create_task(watch_health(health_servicer, app, ready)),
             asyncio.create_task(watch_loop_lag(), name="loop-lag")]
    tasks += [asyncio.create_task(_supervised(fn)) for fn in app.background]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.grace_seconds})
    await health_servicer.enter_graceful_shutdown()
    ready.serving = False
    for hook in app.on_shutdown:
        hook()
    stuck = await aio.cancel_and_wait(tasks, settings.grace_seconds)
    if stuck:
        log.warning("background tasks did not stop in time", extra={"tasks": [t.get_coro().__qualname__ for t in stuck]})
    if bridge is not None:
        await asyncio.gather(server.stop(settings.grace_seconds), bridge.stop(settings.grace_seconds))
    else:
        await server.stop(settings.grace_seconds)
    await close_all(app.on_close, settings.grace_seconds)
    log.info("stopped")


async def close_all(closers: list[Callable[[], Awaitable[None]]], timeout: float) -> None:
    """Close a stopping process's dependencies, each within `timeout` seconds; one that will not
    close cleanly does not keep the process up: logged at WARNING in one line when its
    connection was gone already (transient: a NATS stopped before us), else at ERROR with the
    traceback."""
    for close in closers:
        try:
            await asyncio.wait_for(close(), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - see above
            closer = getattr(close, "__qualname__", repr(close))
            if (reason := transient(exc)) is None:
                log.exception("error while closing", extra={"closer": closer})
            else:
                log.warning("not closed cleanly: a connection was gone already",
                            extra={"closer": closer, "reason": reason, "error": one_line(exc)})


def run(service: str, bootstrap: Callable[[config.Settings], Awaitable[App]],
        *, needs: tuple[str, ...] = ()) -> None:
    """Entry point of a service process (`python -m <service>`)."""
    try:
        settings = config.load(service, needs=needs)
    except config.ConfigError as exc:
        raise SystemExit(f"{service}: {exc}") from None
    logs.setup(service, settings.log_level)
    run_loop(serve(settings, bootstrap))


def run_loop(main: Awaitable[None]) -> None:
    """Run a process's main coroutine on uvloop (libuv's event loop: the asyncio plumbing of
    every call, socket write and timer costs less CPU than the standard loop's), unless
    STOCKMESH_EVENT_LOOP=asyncio asks for the standard one."""
    if os.environ.get("STOCKMESH_EVENT_LOOP", "uvloop") == "asyncio":
        asyncio.run(main)  # type: ignore[arg-type]
        return
    import uvloop

    uvloop.run(main)  # type: ignore[arg-type]
