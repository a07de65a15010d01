"""Wires quote_svc. Its RPCs are contract-only until the market-data work lands: they answer
UNIMPLEMENTED, naming themselves. Health is real: SERVING once PostgreSQL, NATS and Redis answer."""
from __future__ import annotations

from meshkit import bus, cache, config, db
from meshkit.server import App
from stockmesh.quote.v1 import quote_service_pb2_grpc


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url and settings.nats_url and settings.redis_url
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=10)
    nc = await bus.connect(settings.nats_url, "quote_svc")
    redis = cache.connect(settings.redis_url)
    return App(
        name="quote_svc",
        servicers=[(quote_service_pb2_grpc.add_QuoteServiceServicer_to_server,
                    quote_service_pb2_grpc.QuoteServiceServicer(), "stockmesh.quote.v1.QuoteService")],
        checks=[db.pool_check(pool), bus.nats_check(nc), cache.redis_check(redis)],
        on_close=[nc.drain, pool.close, redis.aclose],
    )
