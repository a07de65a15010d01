"""The outbox relay: publishes what the order transactions wrote to orders.outbox to the
JetStream stream of order flow, in id order, one relay at a time (a PostgreSQL advisory
lock elects it), marking each row once JetStream has acknowledged it.

A crash between the publish and the mark republishes the row: JetStream's duplicate window
drops it by Nats-Msg-Id, and the engine drops repeats by id anyway.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from meshkit import bus, failpoints
from order_svc.adapters.repository import OutboxRepository

log = logging.getLogger("order_svc.outbox")
RELAY_LOCK = 0x5F0C_0B0E  # advisory lock key of the outbox relay


async def ensure_orders_stream(js: JetStreamContext, namespace: str) -> str:
    name = bus.stream_name(namespace, "ORDERS")
    config = StreamConfig(
        name=name, subjects=[bus.subject(namespace, "orders", ">")], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, duplicate_window=120.0, num_replicas=1)
    try:
        await js.add_stream(config)
    except Exception:  # noqa: BLE001 - exists with another config: bring it to ours
        await js.update_stream(config)
    return name


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, batch: int = 500) -> None:
        self.pool, self.js, self.batch = pool, js, batch
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with self.pool.acquire() as conn:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                await asyncio.sleep(1)  # another replica relays; take over if it dies
            log.info("outbox relay elected")
            try:
                while True:
                    published = await self.relay_once(conn)
                    if published < self.batch:
                        try:
                            await asyncio.wait_for(self._wake.wait(), timeout=0.2)
                        except asyncio.TimeoutError:
                            pass
                        self._wake.clear()
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)

    async def relay_once(self, conn: asyncpg.Connection) -> int:
        repo = OutboxRepository(conn)
        rows = await repo.unpublished(self.batch)
        done: list[int] = []
        try:
            for r in rows:
                await self.js.publish(r["subject"], bytes(r["payload"]), headers={"Nats-Msg-Id": r["msg_id"]})
                done.append(r["id"])
                failpoints.hit("relay.after_publish")
        finally:
            if done:
                await repo.mark_published(done)
        return len(rows)
