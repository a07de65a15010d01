"""Wires ledger_svc's dependencies; tests pass their own pool through it."""
from __future__ import annotations

import functools

import asyncpg
from nats.aio.client import Client

from ledger_svc.adapters.orders import GrpcOpenOrders
from ledger_svc.entrypoints.grpc_server import LedgerServicer
from ledger_svc.entrypoints.hold_server import HoldServicer
from ledger_svc.entrypoints.settlement_server import SettlementServicer
from ledger_svc.service_layer import handlers, runner, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, channels, config, db, executions
from meshkit.marketdata import JetStreamQuotes
from meshkit.server import App
from stockmesh.ledger.v1 import hold_service_pb2_grpc, ledger_service_pb2_grpc, settlement_service_pb2_grpc

# How long a refusal for want of cash or shares waits for the ledger's execution consumers to
# apply what the engine published before it (they trail order_svc's by milliseconds; longer
# only when the ledger is behind or its elected consumer is being replaced).
EXECUTIONS_IN_FLIGHT_WAIT = 2.0


def lock_wait() -> float:
    """LEDGER_LOCK_WAIT_SECONDS (1): how long a call that takes accounts (placing, capturing,
    releasing or moving a hold, a deposit, a withdrawal) waits for a lock held by another
    transaction (a stuck session, a row locked by hand; fills hold one for milliseconds) before
    it is answered UNAVAILABLE ACCOUNT_BUSY (retry with the same ids) instead of waiting out
    the pool's 30 s command timeout (handlers.HOLD_LOCK_WAIT, handlers.bounded). Kept above an
    execution run's wait (settlement.RUN_LOCK_WAIT, 0.5 s), or an account the run holds while it
    waits is answered busy; at least 0.1 s, or a fill's moment alone would answer calls busy."""
    return float(config.env_decimal("LEDGER_LOCK_WAIT_SECONDS", str(handlers.HOLD_LOCK_WAIT), minimum="0.1"))


def build(pool: asyncpg.Pool, nc: Client | None = None, namespace: str = "stockmesh",
          order_addr: str | None = None, database_url: str | None = None,
          lock_wait: float = handlers.HOLD_LOCK_WAIT) -> App:
    """With a NATS connection, the ledger also settles the engine's executions as they come and
    values positions at the latest quote; with order_svc's address, portfolios list open orders;
    with the database's URL, only the replica elected for it applies the executions. `lock_wait`:
    the calls' (see lock_wait())."""
    uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
    postgres = db.pool_check(pool, database_url)
    background, soft_checks, closers = [], [], [pool.close, postgres.close]
    orders = None
    if order_addr:
        channel = channels.internal_channel(order_addr)
        orders = GrpcOpenOrders(channel)
        closers.append(channel.close)
    applied = None
    if nc is not None:  # a refusal for want of cash or shares first waits for executions in flight
        applied = functools.partial(executions.wait_applied, nc.jetstream(), namespace, "ledger",
                                    timeout=EXECUTIONS_IN_FLIGHT_WAIT)
    servicer = LedgerServicer(uow, JetStreamQuotes(nc.jetstream(), namespace) if nc else None, orders, applied,
                              lock_wait)
    if nc is not None:
        js = nc.jetstream()
        background.append(lambda: executions.consume(
            js, namespace, "ledger", apply_batch=lambda exs: settlement.apply_executions(exs, uow),
            elect_on=database_url))
        if database_url:  # executions parked behind a held account, by the one replica elected for it
            background.append(lambda: db.elected(database_url, f"{namespace}.ledger.unpark",
                                                 lambda: settlement.unpark_loop(uow)))
        else:
            background.append(lambda: settlement.unpark_loop(uow))
        if database_url:  # the end-of-day batch, by the one replica elected for it
            background.append(lambda: db.elected(database_url, f"{namespace}.settlement",
                                                 lambda: runner.settlement_loop(uow, js, namespace)))
        # Not readiness: every call of the ledger is answered from PostgreSQL. Without NATS
        # the executions wait in the stream (the consumer reconnects and goes on where it
        # stopped), a portfolio is valued at the last market known, and a refusal that must
        # first wait for executions in flight, or a settlement that reads the journal, is
        # UNAVAILABLE by itself. While a NATS stall made the ledger NOT_SERVING, Envoy (or a
        # Kubernetes Service) had no ledger to send a hold to: every PlaceOrder failed (round 22).
        soft_checks.append(bus.nats_check(nc))
        closers.insert(0, nc.drain)
    return App(
        name="ledger_svc",
        servicers=[
            (ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, servicer,
             "stockmesh.ledger.v1.LedgerService"),
            (hold_service_pb2_grpc.add_HoldServiceServicer_to_server,
             HoldServicer(uow, applied, lock_wait), "stockmesh.ledger.v1.HoldService"),
            (settlement_service_pb2_grpc.add_SettlementServiceServicer_to_server,
             SettlementServicer(uow, nc.jetstream() if nc is not None else None, namespace),
             "stockmesh.ledger.v1.SettlementService"),
        ],
        checks=[postgres],
        soft_checks=soft_checks,
        background=background,
        on_close=closers,
    )


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url and settings.nats_url
    pool = await db.create_pool(settings.database_url, max_size=db.pool_max(10))
    nc = await bus.connect(settings.nats_url, "ledger_svc")
    return build(pool, nc, settings.namespace, settings.order_addr, database_url=settings.database_url,
                 lock_wait=lock_wait())
