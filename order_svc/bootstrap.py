"""Wires order_svc: PostgreSQL (orders, outbox), the ledger's HoldService, JetStream (order
flow out, market data in), Redis (rate limits, fail open)."""
from __future__ import annotations

import logging

from meshkit import bus, cache, channels, config, db, executions
from meshkit.config import env_decimal, env_int
from meshkit.ratelimit import Limit, RateLimiter
from meshkit.server import App
from order_svc.adapters.holds import GrpcHolds
from meshkit.marketdata import JetStreamQuotes
from order_svc.adapters.market import Halts
from order_svc.adapters import outbox
from order_svc.adapters.outbox import OutboxRelay
from order_svc.entrypoints.grpc_server import OrderServicer
from order_svc.adapters.notifications import UpdateNotifier
from order_svc.service_layer import handlers, lifecycle, session
from order_svc.service_layer.unit_of_work import OrderUnitOfWork
from stockmesh.order.v1 import order_service_pb2_grpc

log = logging.getLogger("order_svc")


def relays_in_process() -> bool:
    """ORDER_OUTBOX_RELAY: `in-process` (the default: order_svc relays its own outbox) or
    `external` (another process does: order_svc.entrypoints.relay, as `stockmesh up` runs it)."""
    mode = config.env_choice("ORDER_OUTBOX_RELAY", ("in-process", "external"), "in-process")
    return mode == "in-process"


def limits() -> tuple[Limit, Limit]:
    return (Limit(float(env_decimal("ORDER_RATE_PER_ACCOUNT", "50")), int(env_decimal("ORDER_BURST_PER_ACCOUNT", "100"))),
            Limit(float(env_decimal("ORDER_RATE_PER_SYMBOL", "2000")), int(env_decimal("ORDER_BURST_PER_SYMBOL", "4000"))))


def lock_wait() -> float:
    """ORDER_LOCK_WAIT_SECONDS (2): how long a CancelOrder's or ReplaceOrder's transaction waits
    for a lock (its order's row, held by another transaction) before the call is answered
    UNAVAILABLE ORDER_BUSY (retry with the same ids) instead of waiting out the pool's 30 s
    command timeout. Execution runs hold an order's row for milliseconds; at least 0.1 s, or
    those moments alone would answer commands busy."""
    return float(env_decimal("ORDER_LOCK_WAIT_SECONDS", "2", minimum="0.1"))


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url and settings.nats_url and settings.ledger_addr
    pool = await db.create_pool(settings.database_url, min_size=2, max_size=db.pool_max(10))
    nc = await bus.connect(settings.nats_url, "order_svc")
    js = nc.jetstream()
    await bus.ensure_stream(js, settings.namespace, "orders")
    redis = cache.connect(settings.redis_url) if settings.redis_url else None
    ledger = channels.internal_channel(settings.ledger_addr)
    # Relaying here, the saga wakes the relay directly; an external relay wakes on the outbox's
    # PostgreSQL notification (migration 0006).
    relay = (OutboxRelay(settings.database_url, js, retention=outbox.retention(), namespace=settings.namespace)
             if relays_in_process() else None)
    account_limit, symbol_limit = limits()
    quotes = JetStreamQuotes(js, settings.namespace)
    deps = handlers.Deps(
        uow=lambda: OrderUnitOfWork(pool), holds=GrpcHolds(ledger, batches_in_flight=env_int("HOLD_BATCHES_IN_FLIGHT", 1, minimum=1)), quotes=quotes,
        halts=Halts(pool), limiter=RateLimiter(redis, settings.namespace), account_limit=account_limit,
        symbol_limit=symbol_limit, namespace=settings.namespace, wake_relay=relay.wake if relay else lambda: None,
        market_collar=env_decimal("MARKET_ORDER_COLLAR", "0.05"), price_band=env_decimal("PRICE_BAND", "0.20"),
        write_batches_in_flight=env_int("ORDER_WRITE_BATCHES_IN_FLIGHT", 1, minimum=1), lock_wait=lock_wait())
    # Holds older than this whose order was never recorded are given back (handlers.reaper_loop).
    # Until then a retry with the same client_order_id completes the placement: two minutes
    # cover a client's retries across a restart of the whole mesh (round 17: 27 s; with 30 s a
    # retry after it heard PLACEMENT_UNDONE and had to place the order again).
    orphan_age = env_int("ORDER_ORPHAN_HOLD_AGE_SECONDS", 120, minimum=1)
    notifier = UpdateNotifier(settings.database_url)
    postgres = db.pool_check(pool, settings.database_url)
    # First the placements whose callers went away (handlers.place_order), which need the pool,
    # the ledger and NATS; each closer is given the grace period.
    closers = [lambda: _finish_placements(deps, 0.9 * settings.grace_seconds), nc.drain, pool.close, postgres.close,
               ledger.close] + ([redis.aclose] if redis else [])
    return App(
        name="order_svc",
        servicers=[(order_service_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer(deps, notifier),
                    "stockmesh.order.v1.OrderService")],
        # Redis is not a readiness dependency: rate limits fail open without it.
        checks=[postgres, bus.nats_check(nc)],
        background=([relay.run] if relay else []) + [
            lambda: quotes.follow(nc), lambda: handlers.recovery_loop(deps), notifier.run,
            lambda: handlers.reaper_loop(deps, orphan_age=orphan_age),
            lambda: session.session_close_loop(deps.uow, settings.namespace, deps.wake_relay),
            lambda: executions.consume(js, settings.namespace, "orders",
                                       apply_batch=lambda exs: lifecycle.apply_executions(exs, deps),
                                       elect_on=settings.database_url)],
        # Open StreamOrderUpdates calls end at once with UNAVAILABLE when shutdown begins.
        on_shutdown=[notifier.close],
        on_close=closers,
        # The commands (the admission-limited cluster in Envoy) go through Envoy's gRPC reverse
        # bridge: protobuf over HTTP/1.1, no gRPC framing in Python (meshkit.bridge).
        bridged=[f"/stockmesh.order.v1.OrderService/{m}" for m in ("PlaceOrder", "ReplaceOrder", "CancelOrder")],
    )


async def _finish_placements(deps: handlers.Deps, timeout: float) -> None:
    left = await deps.placing.wait(timeout)
    if left:  # their holds are the reaper's, their retries complete them
        log.warning("placements still running at shutdown", extra={"count": len(left)})
