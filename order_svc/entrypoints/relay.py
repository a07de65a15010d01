"""The outbox relay as a process of its own: `python -m order_svc.entrypoints.relay`.

What `stockmesh up` runs (with ORDER_OUTBOX_RELAY=external for order_svc), so that under load
the hand-off of accepted orders to the engine has an event loop to itself instead of taking
turns on order_svc's front door (docs/benchmarks/place_order.md). It is a mesh process like
the services: settings from the environment, health (SERVING while PostgreSQL and NATS
answer), metrics, a graceful stop. The relay itself is order_svc.adapters.outbox, unchanged;
its advisory lock still elects one relay, so an order_svc that relays in process and this
one never publish at once.
"""
from __future__ import annotations

from meshkit import bus, config, db
from meshkit.server import App, run
from order_svc.adapters.outbox import OutboxRelay, retention


async def bootstrap(settings: config.Settings) -> App:
    assert settings.database_url and settings.nats_url
    # Readiness's PostgreSQL check has a connection of its own (db.PostgresProbe); the relay's
    # work has its own too (OutboxRelay.run): no pool.
    postgres = db.pool_check(None, settings.database_url)
    nc = await bus.connect(settings.nats_url, "order_relay")
    js = nc.jetstream()
    await bus.ensure_stream(js, settings.namespace, "orders")
    relay = OutboxRelay(settings.database_url, js, retention=retention(), namespace=settings.namespace)
    return App(name="order_relay", servicers=[], checks=[postgres, bus.nats_check(nc)],
               background=[relay.run], on_close=[nc.drain, postgres.close])


if __name__ == "__main__":
    run("order_relay", bootstrap, needs=("DATABASE_URL", "NATS_URL"))
