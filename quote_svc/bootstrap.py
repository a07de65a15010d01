"""Wires quote_svc: the live quote book fed by each replica's own ordered consumer of the
market-data stream, the Redis cache behind it, the candle writer (a durable consumer shared by
the replicas) and the gRPC servicer. Health: SERVING while PostgreSQL and NATS answer and the
quote book has caught up with the feed. Redis is not a health dependency: it is only a cache."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from nats.aio.client import Client

from meshkit import bus, cache, config, db, symbols
from meshkit.server import App
from quote_svc.adapters import feed
from quote_svc.adapters.cache import RedisQuoteCache
from quote_svc.entrypoints.grpc_server import STREAMS_PER_ACCOUNT, QuoteServicer
from quote_svc.service_layer import candles
from quote_svc.service_layer.candles import CandleCache
from quote_svc.service_layer.quotes import QuoteBook
from quote_svc.service_layer.unit_of_work import QuoteUnitOfWork
from stockmesh.quote.v1 import quote_service_pb2_grpc

log = logging.getLogger("quote_svc")


@dataclass
class Parts:
    """What tests reach into."""

    book: QuoteBook
    cache: RedisQuoteCache
    # GetCandles' cache of final candles (tests check it is used and invalidated).
    candle_cache: CandleCache | None = None


def build(pool: asyncpg.Pool, nc: Client, redis: aioredis.Redis | None, namespace: str, *,
          candles_writer: bool = True, cache_refresh: float = 10.0,
          database_url: str | None = None, streams_per_account: int = STREAMS_PER_ACCOUNT) -> tuple[App, Parts]:
    js = nc.jetstream()
    book = QuoteBook()
    quote_cache = RedisQuoteCache(redis, namespace, refresh=cache_refresh)
    book.listeners.append(quote_cache.changed)
    uow = lambda: QuoteUnitOfWork(pool)  # noqa: E731

    async def follow() -> None:
        for q in await feed.of_this_feed(js, namespace, await quote_cache.load(sorted(symbols.listed()))):
            book.seed(q)
        await feed.follow_quotes(js, namespace, sorted(symbols.listed()), book.apply, book.ready)

    async def write_cache() -> None:
        await quote_cache.run(lambda: book.quotes)

    async def write_candles() -> None:
        await feed.consume_trades(js, namespace, lambda events: candles.record_trades(events, uow))

    async def caught_up() -> None:
        if not book.ready.is_set():
            raise RuntimeError("quote book not caught up with the market-data feed yet")

    background = [follow, write_cache] + ([write_candles] if candles_writer else [])
    postgres = db.pool_check(pool, database_url)  # readiness on a connection of its own
    servicer = QuoteServicer(book, uow, streams_per_account=streams_per_account)
    app = App(
        name="quote_svc",
        servicers=[(quote_service_pb2_grpc.add_QuoteServiceServicer_to_server, servicer,
                    "stockmesh.quote.v1.QuoteService")],
        checks=[postgres, bus.nats_check(nc), caught_up],
        background=background,
        on_shutdown=[book.close],
        on_close=[nc.drain, pool.close, postgres.close] + ([redis.aclose] if redis is not None else []),
    )
    return app, Parts(book, quote_cache, servicer.candle_cache)


def streams_per_account() -> int:
    """QUOTE_STREAMS_PER_ACCOUNT: StreamQuotes calls one account may have open at once on one
    replica (at least 1)."""
    return config.env_int("QUOTE_STREAMS_PER_ACCOUNT", STREAMS_PER_ACCOUNT, minimum=1)


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url and settings.nats_url and settings.redis_url
    limit = streams_per_account()  # a malformed setting stops start-up before anything connects
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=db.pool_max(10))
    nc = await bus.connect(settings.nats_url, "quote_svc")
    redis = cache.connect(settings.redis_url)
    app, _ = build(pool, nc, redis, settings.namespace, database_url=settings.database_url,
                   streams_per_account=limit)
    return app


async def run_background(app: App) -> list[asyncio.Task]:
    """Start an App's background tasks the way `meshkit.server.serve` does (for tests and
    benchmarks that run the server in-process)."""
    from meshkit.server import _supervised

    return [asyncio.create_task(_supervised(fn)) for fn in app.background]
