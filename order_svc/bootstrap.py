"""Wires order_svc. Its RPCs are contract-only until the orders work lands: they answer
UNIMPLEMENTED, naming themselves. Health is real: SERVING once PostgreSQL and NATS answer."""
from __future__ import annotations

from meshkit import bus, config, db
from meshkit.server import App
from stockmesh.order.v1 import order_service_pb2_grpc


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url and settings.nats_url
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=10)
    nc = await bus.connect(settings.nats_url, "order_svc")
    return App(
        name="order_svc",
        servicers=[(order_service_pb2_grpc.add_OrderServiceServicer_to_server,
                    order_service_pb2_grpc.OrderServiceServicer(), "stockmesh.order.v1.OrderService")],
        checks=[db.pool_check(pool), bus.nats_check(nc)],
        on_close=[nc.drain, pool.close],
    )
